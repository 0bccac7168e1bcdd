"""``launcher config from-terraform DIR`` and ``launcher config show``: the profile (``launcher.profile``).

``from-terraform`` reads ``terraform output -json`` of an applied terraform/aws or terraform/gcp folder
(or a file holding it) and writes that cloud's section of the profile; jobs, endpoints and image pushes
then find the region, bucket, role or service account and repository there.
"""

from __future__ import annotations

from pathlib import Path

import typer

from launcher.cli.common import json_option, output

PROFILE_HELP = "The profile to write or show (env: LAUNCHER_PROFILE; default 'default')."

config_app = typer.Typer(help="The profile: where your cloud resources are (written from terraform outputs).", no_args_is_help=True)


@config_app.command("from-terraform")
def from_terraform(
    source: Path = typer.Argument(..., metavar="DIR", help="An applied terraform folder (terraform/aws, terraform/gcp), or a file of its 'terraform output -json'."),
    profile_name: str = typer.Option(None, "--profile", envvar="LAUNCHER_PROFILE", help=PROFILE_HELP),
    as_json: bool = json_option(),
) -> None:
    """Write the profile's section for the cloud DIR was applied to, from its terraform outputs."""
    from launcher import profile

    file, backend, section = profile.from_terraform(source, profile_name)
    written = {"profile": profile_name or profile.name(), "path": str(file), "backend": backend, "settings": section}
    output(written, as_json, _render_written)


@config_app.command("show")
def show(
    profile_name: str = typer.Option(None, "--profile", envvar="LAUNCHER_PROFILE", help=PROFILE_HELP),
    as_json: bool = json_option(),
) -> None:
    """Print the profile (what unset spec settings fall back to after the environment)."""
    from launcher import profile

    chosen = profile_name or profile.name()
    loaded = profile.load(chosen)
    shown = {"profile": chosen, "path": str(profile.path(chosen)), **loaded.model_dump(exclude_none=True)}
    output(shown, as_json, _render_profile)


def _render_written(written: dict) -> None:
    backend, settings = written["backend"], written["settings"]
    typer.echo(f"Wrote the {backend} section of profile '{written['profile']}' ({written['path']}):")
    for key, value in settings.items():
        typer.echo(f"  {key}: {value}")
    typer.echo(f"Jobs and deploys with --backend {backend} use it wherever the spec and the environment say nothing.")
    secret = settings.get("hf_token_secret")
    if secret and backend == "sagemaker":
        typer.echo(f"For a gated base model: aws secretsmanager put-secret-value --secret-id {secret} --secret-string hf_..., "
                   f"then set sagemaker.hf_token_secret: {secret} in that job's spec.")
    elif secret:
        typer.echo(f"For a gated base model: printf hf_... | gcloud secrets versions add {secret.rsplit('/', 1)[-1]} --data-file=-, "
                   f"then set vertex.hf_token_secret: {secret}/versions/latest in that job's spec.")


def _render_profile(shown: dict) -> None:
    import yaml

    body = {key: value for key, value in shown.items() if key not in ("profile", "path")}
    if not any(key in body for key in ("sagemaker", "vertex")):
        typer.echo(f"Profile '{shown['profile']}' is empty ({shown['path']} does not exist). "
                   "Write it with 'launcher config from-terraform terraform/aws' (or terraform/gcp).")
        return
    typer.echo(f"# profile '{shown['profile']}': {shown['path']}")
    typer.echo(yaml.safe_dump(body, sort_keys=False).rstrip())


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
