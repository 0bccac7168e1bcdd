"""The ``launcher`` CLI entry point.

Each command group lives in its own module with a ``register(app)`` function; heavy libraries are
imported inside the commands, so ``launcher --help`` stays fast. Shared options, the output helper and
the one way to fail are in ``launcher.cli.common``: the group below hands every ``LauncherError`` to
``common.abort`` (``Error: <message>`` on stderr, or a JSON object under ``--json``; exit 2 for bad input,
1 for a failed job or run; the traceback first with ``--debug``, the exit code unchanged).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import TyperGroup

from launcher.cli import common
from launcher.errors import LauncherError, reason

try:  # typer >= 0.2x carries its own copy of click, whose exceptions all derive from this
    from typer import TyperException as _ClickError
except ImportError:  # pragma: no cover - older typer on click itself
    from click import ClickException as _ClickError


class _LauncherGroup(TyperGroup):
    """Every failure of any command goes through ``common.abort``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: ANN001 - click's signature
        common.start(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except LauncherError as exc:
            common.abort(str(exc), exc.exit_code, details=exc.details)
        except _ClickError as exc:  # a usage error: click prints it with the usage, unless it is to be JSON
            if not common.json_mode() or getattr(exc, "exit_code", 1) != 2:
                raise
            failed_in = getattr(exc, "ctx", None)
            where = failed_in.command_path if failed_in is not None else "launcher"
            common.abort(f"{exc.format_message().rstrip('.')}. To fix: see '{where} --help'", 2)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            common.abort(f"{reason(exc)}. To fix: check the path it names (permissions, free space), then run the command again", 1)
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with --debug
            common.abort(
                f"unexpected {type(exc).__name__}: {reason(exc)}. To fix: run the command again with --debug for the traceback, "
                "and report it",
                1,
            )


def _version(value: bool) -> None:
    if value:
        from launcher import __version__

        typer.echo(f"launcher {__version__}")
        raise typer.Exit()


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
COMMAND_MODULES = ["init", "data", "plan", "jobs", "report", "serve", "monitor"]


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", envvar="LAUNCHER_DEBUG", help="Show the traceback of an error; the exit code stays (env: LAUNCHER_DEBUG)."
    ),
    home: str = typer.Option(
        None, "--home", envvar="LAUNCHER_HOME", help="Folder for local job state (env: LAUNCHER_HOME; default ./.launcher)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, expose_value=False, help="Print launcher's version and exit."
    ),
) -> None:
    common.set_debug(debug)
    if debug:
        os.environ["LAUNCHER_DEBUG"] = "1"
    if home:
        os.environ["LAUNCHER_HOME"] = home


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
