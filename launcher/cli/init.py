"""``launcher init [PATH]``: write a commented example job spec.

The example is ``launcher/templates/job.yaml``: every section and key, each with a one-line comment and
its default, starting with the command that runs it. A test loads it with ``JobSpec.from_yaml`` and
checks it names every key of the spec, so it cannot drift from the model.
"""

from __future__ import annotations

from pathlib import Path

import typer

from launcher.cli.common import json_option, output


def template(path: str = "job.yaml") -> str:
    """The example spec, with ``path`` in the commands it starts with."""
    from importlib import resources

    text = resources.files("launcher").joinpath("templates/job.yaml").read_text(encoding="utf-8")
    return text.replace("{path}", path)


def init(
    path: Path = typer.Argument(Path("job.yaml"), metavar="[PATH]", help="Where to write the spec (default job.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite PATH if it exists."),
    as_json: bool = json_option(),
) -> None:
    """Write a commented example job spec to PATH."""
    from launcher.errors import UserInputError

    if path.exists() and not force:
        raise UserInputError(f"'{path}' already exists. To fix: pass --force to overwrite it, or give another path")
    if path.is_dir():
        raise UserInputError(f"'{path}' is a folder. To fix: give a file path such as {path / 'job.yaml'}")
    if not path.parent.is_dir():
        raise UserInputError(f"folder '{path.parent}' does not exist. To fix: create it first")
    from launcher.state import write_text

    write_text(path, template(str(path)))
    written = {"path": str(path), "next": f"launcher train {path}"}
    output(written, as_json, lambda w: typer.echo(f"Wrote {w['path']}. Point data.train at your JSONL file, then run: {w['next']}"))


def register(app: typer.Typer) -> None:
    app.command("init")(init)
