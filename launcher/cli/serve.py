"""Serving commands: ``deploy``, ``invoke``, ``endpoints``, ``undeploy``.

Thin wrappers over ``launcher.api``. ``deploy`` takes a finished job's id (its model dir comes from its
backend's ``artifacts``) or a model dir, and returns once the endpoint answers; an endpoint's name is all
the later commands need (``$LAUNCHER_HOME/endpoints.json`` remembers its backend). ``invoke`` sends one
chat turn (the argument, or ``--file``) and prints the answer, or streams it with ``--stream``. An API
key is read from ``LAUNCHER_API_KEY`` (or the variable ``--api-key-env`` names) and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from launcher.cli.common import json_option, output, print_json, say

if TYPE_CHECKING:
    from launcher.backends.base import Endpoint

_STATE_STYLE = {"Creating": "yellow", "InService": "green", "Failed": "red", "Stopped": "dim"}


def _options(values: list[str], what: str) -> dict[str, str]:
    from launcher.errors import UserInputError

    found = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserInputError(f"{what} '{item}' is not NAME=VALUE. To fix: e.g. {what} threads=2")
        found[key] = value
    return found


def deploy(
    model: str = typer.Argument(..., metavar="JOB_ID_OR_MODEL_DIR", help="A finished job's id, or a model dir (local, s3://, gs://)."),
    backend: str = typer.Option("local", "--backend", "-b", envvar="LAUNCHER_BACKEND", help="Where it is served (env: LAUNCHER_BACKEND; default local)."),
    name: str = typer.Option(None, "--name", "-n", help="The endpoint's name (default: from the job id or folder)."),
    port: int = typer.Option(None, "--port", help="Local: the port on 127.0.0.1 (default: a free one)."),
    adapter: list[str] = typer.Option([], "--adapter", metavar="NAME=JOB_ID_OR_DIR", help="Another adapter of the same base, served beside it."),
    capture_percent: float = typer.Option(100.0, "--capture-percent", help="Share of requests captured (0-100)."),
    max_new_tokens_cap: int = typer.Option(1024, "--max-new-tokens-cap", help="Refuse requests asking for more new tokens."),
    api_key_env: str = typer.Option("LAUNCHER_API_KEY", "--api-key-env", help="Variable holding an API key to require (if set)."),
    option: list[str] = typer.Option([], "--option", "-o", metavar="KEY=VALUE",
                                     help="A backend setting. Local: the server's (threads=2, max_concurrency=16). SageMaker: "
                                          "instance_type, accelerator, instance_count, serving_image, kms_key_id, role_arn, bucket, region. "
                                          "Vertex AI: machine_type, accelerator, min_replicas, max_replicas, serving_image, project, region, staging_bucket."),
    local_check: bool = typer.Option(True, "--local-check/--no-local-check",
                                     help="SageMaker, Vertex AI: run the serving contract on this machine first (skip for an image that cannot run here)."),
    monitor_sink: list[str] = typer.Option([], "--monitor-sink", metavar="URI",
                                           help="Attach a monitor sending alerts here (repeatable; see 'launcher monitor poll "
                                                "--help'); then 'launcher monitor poll --endpoint NAME'."),
    as_json: bool = json_option(),
) -> None:
    """Serve a finished job's model (or a model dir) as an endpoint; returns once it answers."""
    from launcher.api import deploy as api_deploy

    adapters = _options(adapter, "--adapter")
    endpoint = api_deploy(model, backend=backend, name=name, port=port, adapters=adapters, capture_percent=capture_percent,
                          max_new_tokens_cap=max_new_tokens_cap, api_key_env=api_key_env, local_check=local_check,
                          monitor_sinks=monitor_sink, **_options(option, "--option"))
    if endpoint.reattached:
        say(f"Endpoint {endpoint.name} is already serving this model: re-attached.", as_json)
    else:
        say(f"Endpoint {endpoint.name} is serving on the {endpoint.backend} backend.", as_json)
    if not as_json and endpoint.backend == "local":
        say(f"URL: {endpoint.url} (OpenAI: {endpoint.url}/v1, SageMaker: /invocations, Vertex AI: /predict)", as_json)
    elif not as_json:
        say(f"URL: {endpoint.url}", as_json)
    if not as_json:
        say(f"Capture: {endpoint.capture}", as_json)
        say(f"Try it: launcher invoke {endpoint.name} \"your prompt\"; stop it: launcher undeploy {endpoint.name}", as_json)
    output(endpoint, as_json)


def invoke(
    name: str = typer.Argument(..., metavar="NAME", help="The endpoint ('launcher endpoints' lists them)."),
    prompt: str = typer.Argument(None, metavar="PROMPT", help="One user turn (or use --file)."),
    file: Path = typer.Option(None, "--file", "-f", help="A file holding the prompt, or a JSON chat request ({\"messages\": [...]})."),
    stream: bool = typer.Option(False, "--stream", "-s", help="Print the answer as it is generated."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="New tokens at most (default: the endpoint's)."),
    model: str = typer.Option(None, "--model", "-m", help="Which adapter (or the base) answers (default: the deployed one)."),
    temperature: float = typer.Option(None, "--temperature", help="Sampling temperature (default: greedy)."),
    backend: str = typer.Option(None, "--backend", "-b", help="The endpoint's backend (default: where it was deployed from here)."),
    as_json: bool = json_option('The OpenAI chat completion object on stdout (with --stream: one {"text": ...} object a line); an error as {"error": ..., "exit_code": ...}.'),
) -> None:
    """Ask an endpoint: print its answer."""
    import json

    from launcher.api import invoke as api_invoke
    from launcher.errors import UserInputError

    if (prompt is None) == (file is None):
        raise UserInputError("give the prompt as an argument or with --file, not both or neither. To fix: launcher invoke NAME \"prompt\"")
    request: str | dict = prompt
    if file is not None:
        if not file.is_file():
            raise UserInputError(f"--file {file} does not exist. To fix: check the path")
        text = file.read_text(encoding="utf-8")
        request = text
        if file.suffix == ".json":
            try:
                request = json.loads(text)
            except ValueError as exc:
                raise UserInputError(f"--file {file} is not valid JSON: {exc}. To fix: give a chat request or a .txt prompt") from None
            if not isinstance(request, dict) or "messages" not in request:
                raise UserInputError(f"--file {file} holds no 'messages'. To fix: {{\"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}]}}")
    settings = {"max_tokens": max_tokens, "model": model, "temperature": temperature}
    if stream:
        try:
            for piece in api_invoke(name, request, backend=backend, stream=True, **settings):
                if as_json:
                    print_json({"text": piece}, indent=None)
                else:
                    typer.echo(piece, nl=False)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        if not as_json:
            typer.echo()
        return
    answer = api_invoke(name, request, backend=backend, **settings)
    output(answer, as_json, lambda a: typer.echo(a["choices"][0]["message"]["content"]))


def endpoints(
    backend: str = typer.Option(None, "--backend", "-b", help="Only this backend's endpoints."),
    as_json: bool = json_option(),
) -> None:
    """List endpoints, newest first."""
    from launcher.api import endpoints as api_endpoints

    output(api_endpoints(backend=backend), as_json, _print_endpoints)


def _print_endpoints(found: list[Endpoint]) -> None:
    if not found:
        typer.echo("No endpoints.")
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE)
    for column in ("NAME", "STATE", "BACKEND", "URL", "CREATED (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("MODEL")
    for endpoint in found:
        state = f"[{_STATE_STYLE.get(endpoint.state, 'white')}]{endpoint.state}[/]"
        table.add_row(endpoint.name, state, endpoint.backend, endpoint.url, endpoint.created_at.replace("T", " ")[5:16],
                      endpoint.extra.get("source") or endpoint.model)
    Console().print(table)


def undeploy(
    name: str = typer.Argument(..., metavar="NAME", help="The endpoint."),
    backend: str = typer.Option(None, "--backend", "-b", help="The endpoint's backend (default: where it was deployed from here)."),
    as_json: bool = json_option(),
) -> None:
    """Stop an endpoint; its captured traffic is flushed and kept."""
    from launcher.api import undeploy as api_undeploy

    endpoint = api_undeploy(name, backend=backend)
    output(endpoint, as_json, lambda e: typer.echo(f"Endpoint {e.name}: {e.state}. Capture kept in {e.capture}"))


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("invoke")(invoke)
    app.command("endpoints")(endpoints)
    app.command("undeploy")(undeploy)
