"""The ``mailcrm`` command line's command groups (typer), one module per group; the top-level
``cli.py`` assembles them into the root command. :mod:`.common` holds what they share: the root
state (config and database, opened lazily), output helpers and the option types."""
