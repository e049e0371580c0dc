"""The face of the CRM: what front ends (``cli.py``, ``proxy/``) call. Plain functions and
dataclasses over a :class:`~crm.store.db.Database`; see ARCHITECTURE.md."""
