"""What every command shares: the ``--json`` option, one output helper, one way to fail.

A command module (today's and the deploy, endpoints and monitor groups to come) uses only these:

* ``json_option()``: the ``--json`` flag, the same name and help on every command.
* ``output(data, as_json, render)``: the command's result, as JSON on stdout for scripts (``to_dict()``
  where the object has one), or drawn for people by ``render(data)``.
* ``say(text, as_json)``: a message for people while a command runs; on stderr under ``--json``, so
  stdout holds nothing but the JSON.
* ``abort(message, code)``: the one way to fail. ``Error: <message>`` on stderr, or under ``--json`` the
  object ``{"error": message, "exit_code": code}``; exit 2 for bad input (usage, config), 1 for a
  failure. With ``--debug`` (env ``LAUNCHER_DEBUG``) the traceback of the exception being handled
  comes first (under ``--json``: in the object's ``traceback``); the exit code stays the same.

Commands raise ``LauncherError``s (``UserInputError``: exit 2) rather than printing errors: the CLI
group (``main._LauncherGroup``) hands every one to ``abort``, a usage error under ``--json`` too, and
any other exception as an unexpected failure (exit 1). Only typer and the standard library are
imported here, so ``launcher --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import typer

# What the command line being run asked for; set by the CLI group at the start of every invocation.
_mode = {"json": False, "debug": False}

JSON_HELP = 'Print the result as JSON on stdout; messages go to stderr, an error as {"error": ..., "exit_code": ...}.'


def json_option(help: str = JSON_HELP) -> Any:  # noqa: A002 - typer's own keyword
    """The ``--json`` option of every command: ``as_json: bool = json_option()``."""
    return typer.Option(False, "--json", help=help)


def start(args: Sequence[str]) -> None:
    """A new command line: its errors are JSON when it holds ``--json`` (noted before parsing, so a usage
    error is JSON too); ``--debug`` is off until the group's options say otherwise."""
    _mode["json"] = "--json" in args
    _mode["debug"] = False


def set_debug(on: bool) -> None:
    _mode["debug"] = on


def json_mode() -> bool:
    """Whether the command line being run asked for ``--json``."""
    return _mode["json"]


def debug_mode() -> bool:
    return _mode["debug"]


def to_json(data: Any) -> Any:
    """``data`` made JSON-ready: an object's ``to_dict()``, lists and dicts of them, paths as strings."""
    if hasattr(data, "to_dict"):
        return data.to_dict()
    if isinstance(data, (list, tuple)):
        return [to_json(item) for item in data]
    if isinstance(data, dict):
        return {key: to_json(value) for key, value in data.items()}
    return data


def print_json(data: Any, *, indent: int | None = 2, err: bool = False) -> None:
    typer.echo(json.dumps(to_json(data), indent=indent, default=str), err=err)


def output(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """A command's result: JSON on stdout under ``--json``, else ``render(data)`` (nothing without one)."""
    if as_json:
        print_json(data)
    elif render is not None:
        render(data)


def say(text: str, as_json: bool) -> None:
    """A message for people: stdout, or stderr under ``--json`` (stdout is the JSON's alone)."""
    typer.echo(text, err=as_json)


def abort(message: str, code: int = 2, *, details: Sequence[str] = ()) -> NoReturn:
    """Fail: ``Error: message`` on stderr (after ``details``, one problem a line), exit ``code``.

    Under ``--json`` stderr gets one JSON object instead: ``{"error", "exit_code"}``, plus ``details``
    when there are some. With ``--debug``, the traceback of the exception being handled, if any.
    """
    trace = _traceback() if debug_mode() else None
    sys.stdout.flush()  # what the command printed first, then the error, when both go to one terminal
    if json_mode():
        error: dict[str, Any] = {"error": message, "exit_code": code}
        if details:
            error["details"] = list(details)
        if trace:
            error["traceback"] = trace
        print_json(error, indent=None, err=True)
    else:
        if trace:
            typer.echo(trace, err=True, nl=False)
        for line in details:
            typer.echo(line, err=True)
        typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _traceback() -> str | None:
    if sys.exc_info()[0] is None:
        return None
    import traceback

    return traceback.format_exc()
