"""What every command group of the CLI shares: the root state (config and database, opened
lazily), the root group that turns errors into one line on stderr, output (``out``, ``fail``,
``print_json``, ``table``) and the option types used by more than one group."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.core import Context as ClickContext  # typer vendors click
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperArgument, TyperGroup, TyperOption

from crm.config import Config, load_config
from crm.errors import MailcrmError
from crm.face import Database, SecretBox, load_key


def _flag_type(self: TyperOption, ctx: ClickContext) -> str | None:
    """--help: a flag shows as a flag (no ``<bool>``), a value as its metavar."""
    return None if self.is_flag and self.metavar is None else _OPTION_TYPE(self, ctx)


def _argument_type(self: TyperArgument, ctx: ClickContext) -> str | None:
    """--help: an argument named by its metavar (``ADDRESS``) needs no ``<str>`` besides."""
    return None if self.metavar is not None else _ARGUMENT_TYPE(self, ctx)


_OPTION_TYPE, _ARGUMENT_TYPE = TyperOption.display_type_rich, TyperArgument.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]
TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign,assignment]


def choice(*allowed: str) -> Callable[[str | None], str | None]:
    """A usage check (exit 2): the value is one of ``allowed``."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return check


class RootGroup(TyperGroup):
    """The root group: a MailcrmError anywhere becomes one line on stderr and exit 1, a usage
    error one line and exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except ClickException as exc:
            hint = " (see --help)" if isinstance(exc, UsageError) else ""
            typer.echo(f"mailcrm: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("mailcrm: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except MailcrmError as exc:
            typer.echo(f"mailcrm: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            STATE.close()


def group(help_text: str) -> typer.Typer:
    """A command group (``mailcrm user ...``): bare, it prints its help."""
    return typer.Typer(no_args_is_help=True, help=help_text)


@dataclass
class State:
    """Root options, opened lazily: the config and the database."""

    db_url: str | None = None
    config_path: str | None = None
    _config: Config | None = None
    _db: Database | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.db_url)
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.database_url)
        return self._db

    def secrets(self) -> SecretBox:
        return SecretBox(load_key(self.config))

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
        self._db = self._config = None


STATE = State()
# markup=False: what it prints holds stranger-written text (server replies, display names, folder
# names); a "[/x]" in it must be shown as it is, not read as rich markup (a MarkupError crash)
out = Console(highlight=False, soft_wrap=True, markup=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, then exit."""
    typer.echo(f"mailcrm: {message}", err=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """JSON only on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    """A rich table of ``columns`` or a one-line note when there is nothing."""
    if not rows:
        out.print(empty)
        return
    grid = Table()
    for name in columns:  # at 80 columns long values fold onto more lines, never cut off
        grid.add_column(name, overflow="fold", min_width=min(len(name), 12))
    for row in rows:  # Text, not markup: a "[/x]" in a stored value is shown as it is
        grid.add_row(*(Text(cell(row.get(c))) for c in columns))
    out.print(grid, soft_wrap=False)


def cell(value: Any) -> str:
    """One value as table or ``key: value`` text."""
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


Opt = typer.Option
JsonOpt = Annotated[bool, Opt("--json", help="Print JSON only.")]
Address = Annotated[str, typer.Argument(metavar="ADDRESS", show_default=False)]
Email = Annotated[str, typer.Argument(metavar="EMAIL", show_default=False)]
IdArg = Annotated[int, typer.Argument(metavar="ID")]
MailboxOpt = Annotated[
    str | None, Opt("--mailbox", metavar="ADDRESS", help="Only for this mailbox.")
]
