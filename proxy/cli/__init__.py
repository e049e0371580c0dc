"""The ``mailcrm`` command groups kept in modules of their own (see cli.py)."""
