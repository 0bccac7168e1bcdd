"""The ``launcher`` CLI entry point.

Each command group lives in its own module with a ``register(app)`` function; heavy libraries are
imported inside the commands, so ``launcher --help`` stays fast. There is one way to fail: a
``LauncherError`` becomes ``Error: <message>`` on stderr with its exit code (2 for bad input, 1 for a
failed job or run); tracebacks only with ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import TyperGroup

from launcher.errors import LauncherError


class _LauncherGroup(TyperGroup):
    """Turns a LauncherError raised by any command into one line on stderr and its exit code."""

    def invoke(self, ctx):  # noqa: ANN001 - click's signature
        try:
            return super().invoke(ctx)
        except LauncherError as exc:
            if os.environ.get("LAUNCHER_DEBUG"):
                raise
            typer.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


app = typer.Typer(
    cls=_LauncherGroup,
    name="launcher",
    help="Fine-tune a generic LLM into a domain specialist (LoRA/QLoRA) on SageMaker, Vertex AI or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Command-group modules, in the order their commands appear in --help.
COMMAND_MODULES = ["init", "data", "plan", "jobs", "report"]


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="LAUNCHER_DEBUG", help="Show full tracebacks (env: LAUNCHER_DEBUG)."),
    home: str = typer.Option(
        None, "--home", envvar="LAUNCHER_HOME", help="Folder for local job state (env: LAUNCHER_HOME; default ./.launcher)."
    ),
) -> None:
    if debug:
        os.environ["LAUNCHER_DEBUG"] = "1"
    if home:
        os.environ["LAUNCHER_HOME"] = home


def abort(message: str, code: int = 2) -> None:
    """Print ``Error: message`` on stderr and exit with ``code`` (2 bad input, 1 failure)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"launcher.cli.{name}")
        module.register(app)


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
