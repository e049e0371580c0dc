"""The store: the engine and sessions (:mod:`.db`), the ORM models, Alembic migrations, the
read queries (:mod:`.lookups`) and credentials at rest (:mod:`.secrets`)."""
