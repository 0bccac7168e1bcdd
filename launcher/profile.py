"""Profiles: where a team's cloud resources are, so jobs, endpoints and image pushes need no hand-typed ARNs.

A profile is one YAML file, ``$LAUNCHER_HOME/profiles/<name>.yaml`` (the name from ``--profile`` /
``LAUNCHER_PROFILE``, default ``default``), with a section per cloud backend, named as the job spec's::

    sagemaker:                       # from terraform/aws
      region: us-east-1
      role_arn: arn:aws:iam::123456789012:role/launcher-sagemaker
      bucket: launcher-123456789012-us-east-1
      prefix: launcher
      image_repository: 123456789012.dkr.ecr.us-east-1.amazonaws.com/launcher
      alerts_topic: arn:aws:sns:us-east-1:123456789012:launcher-alerts
      hf_token_secret: arn:aws:secretsmanager:us-east-1:123456789012:secret:launcher/hf-token-AbCdEf
    vertex:                          # from terraform/gcp
      project: my-project
      region: us-central1
      staging_bucket: launcher-my-project
      ...

``launcher config from-terraform DIR`` writes it from ``terraform output -json`` (the output names in
``AWS_OUTPUTS`` / ``GCP_OUTPUTS`` are the contract with terraform/*/outputs.tf), replacing that cloud's
section only; the write is atomic (``state.write_text``).

Where a setting comes from, first match wins: the job spec (or a deploy ``--option``), then the
environment variable the backend has always read (``LAUNCHER_SAGEMAKER_ROLE_ARN``, ``AWS_REGION``, ...),
then the profile. The backends ask ``value(backend, key)`` last in their own chain, so the order lives
where each setting is read. Two keys are recorded but never applied by themselves: ``hf_token_secret``
(terraform makes the secret without a value, and a job given an empty secret fails even for a public
model: a spec opts in with ``sagemaker.hf_token_secret``) and ``alerts_topic`` (for the monitors).
Standard library, pydantic and PyYAML only: the backends and the CLI read it on start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from launcher.errors import NotFoundError, SpecError, UserInputError

DEFAULT = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SageMakerProfile(_Section):
    region: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    image_repository: str | None = None  # ECR: what `launcher image push` pushes to
    alerts_topic: str | None = None  # an SNS topic ARN
    hf_token_secret: str | None = None  # a Secrets Manager ARN (recorded, applied only through the spec)
    kms_key_arn: str | None = None  # the key terraform encrypts everything with (recorded)


class VertexProfile(_Section):
    project: str | None = None
    region: str | None = None
    staging_bucket: str | None = None
    prefix: str | None = None
    service_account: str | None = None
    image_repository: str | None = None  # Artifact Registry: REGION-docker.pkg.dev/PROJECT/REPO
    alerts_topic: str | None = None  # projects/P/topics/T
    hf_token_secret: str | None = None  # projects/P/secrets/S (recorded, applied only through the spec)


class Profile(_Section):
    source: str | None = None  # what wrote it, for people
    sagemaker: SageMakerProfile | None = None
    vertex: VertexProfile | None = None


SECTIONS = {"sagemaker": SageMakerProfile, "vertex": VertexProfile}
# terraform output -> profile key; the first output of each set tells which cloud a folder is for.
AWS_OUTPUTS = {"sagemaker_role_arn": "role_arn", "aws_region": "region", "artifacts_bucket": "bucket",
               "artifacts_prefix": "prefix", "ecr_repository_url": "image_repository", "alerts_topic_arn": "alerts_topic",
               "hf_token_secret_arn": "hf_token_secret", "kms_key_arn": "kms_key_arn"}
GCP_OUTPUTS = {"vertex_service_account": "service_account", "gcp_project": "project", "gcp_region": "region",
               "artifacts_bucket": "staging_bucket", "artifacts_prefix": "prefix",
               "artifact_registry_repository": "image_repository", "alerts_topic": "alerts_topic",
               "hf_token_secret": "hf_token_secret"}
REQUIRED = {"sagemaker": ("role_arn", "region", "bucket"), "vertex": ("project", "region", "staging_bucket")}
# Keys a backend applies from the profile; the rest are recorded for people and other commands.
APPLIED = {"sagemaker": ("region", "role_arn", "bucket", "prefix"),
           "vertex": ("project", "region", "staging_bucket", "prefix", "service_account")}


def name() -> str:
    """The profile in use: ``LAUNCHER_PROFILE`` (set by ``--profile`` too), default ``default``."""
    chosen = os.environ.get("LAUNCHER_PROFILE") or DEFAULT
    if not _NAME.match(chosen):
        raise UserInputError(f"profile name '{chosen}' is not 1-40 lower-case letters, digits, '-' or '_'. "
                             "To fix: pass such a --profile (or LAUNCHER_PROFILE)")
    return chosen


def path(profile: str | None = None) -> Path:
    from launcher import state

    return state.home() / "profiles" / f"{profile or name()}.yaml"


def load(profile: str | None = None) -> Profile:
    """The profile (an empty one when the default profile has not been written). A profile named
    explicitly that does not exist is NotFoundError; a file that does not validate is SpecError."""
    import yaml

    chosen = profile or name()
    file = path(chosen)
    if not file.is_file():
        if chosen != DEFAULT:
            raise NotFoundError(f"profile '{chosen}' does not exist ({file}). "
                                f"To fix: run 'launcher config from-terraform DIR --profile {chosen}', or unset LAUNCHER_PROFILE")
        return Profile()
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{file}: not valid YAML ({str(exc).splitlines()[0]}). "
                        "To fix: correct it, or write it again with 'launcher config from-terraform DIR'") from None
    try:
        return Profile.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise SpecError(f"{file}: '{where}' is not valid: {first['msg']}. "
                        "To fix: correct it, or write it again with 'launcher config from-terraform DIR'") from None


def value(backend: str, key: str, *, unless_env: tuple[str, ...] = ()) -> str | None:
    """The profile's ``backend.key`` where it is one a backend applies, else None; None too when one of
    ``unless_env`` is set (the environment wins over the profile)."""
    if key not in APPLIED.get(backend, ()) or any(os.environ.get(variable) for variable in unless_env):
        return None
    section = getattr(load(), backend, None)
    return getattr(section, key, None) if section is not None else None


def hint(backend: str) -> str:
    """The end of a 'To fix' naming the profile, for the backends' missing-setting errors."""
    folder = {"sagemaker": "terraform/aws", "vertex": "terraform/gcp"}.get(backend, "terraform/...")
    return f"or run 'launcher config from-terraform {folder}' to write the profile"


# --- from terraform --------------------------------------------------------------------------------
def terraform_outputs(source: Path) -> dict[str, Any]:
    """``terraform output -json`` of the folder ``source`` (run there), or of a file holding it; each
    output's value. UserInputError when terraform is missing or has nothing to say."""
    source = Path(source)
    if source.is_file():
        text, where = source.read_text(encoding="utf-8"), str(source)
    elif source.is_dir():
        terraform = shutil.which("terraform")
        if terraform is None:
            raise UserInputError(f"reading {source} needs terraform, which is not on PATH. To fix: install terraform, "
                                 f"or pass a file written by 'terraform -chdir={source} output -json > outputs.json'")
        done = subprocess.run([terraform, f"-chdir={source}", "output", "-json", "-no-color"], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            lines = [line.strip(" │╷╵") for line in done.stderr.splitlines() if line.strip(" │╷╵")]
            problem = next((line for line in lines if line.startswith("Error:")), lines[0] if lines else f"exit {done.returncode}")
            raise UserInputError(f"'terraform output' failed in {source}: {problem}. To fix: run 'terraform -chdir={source} init' "
                                 "and 'apply' first")
        text, where = done.stdout, f"terraform output of {source}"
    else:
        raise NotFoundError(f"'{source}' does not exist. To fix: pass the terraform folder you applied (terraform/aws or "
                            "terraform/gcp), or a file of its 'terraform output -json'")
    try:
        outputs = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{where} is not JSON ({exc.msg}, line {exc.lineno}). To fix: pass the output of "
                             "'terraform output -json'") from None
    if not isinstance(outputs, dict):
        raise UserInputError(f"{where} is not a JSON object of outputs. To fix: pass the output of 'terraform output -json'")
    if not outputs:
        raise UserInputError(f"{where} has no outputs: the folder has not been applied. To fix: run 'terraform -chdir={source} apply'")
    return {key: entry.get("value") if isinstance(entry, dict) and "value" in entry else entry for key, entry in outputs.items()}


def section_from_outputs(outputs: dict[str, Any], where: str) -> tuple[str, dict[str, str]]:
    """(backend, section) for the outputs of terraform/aws or terraform/gcp."""
    for backend, mapping in (("sagemaker", AWS_OUTPUTS), ("vertex", GCP_OUTPUTS)):
        if next(iter(mapping)) in outputs:
            break
    else:
        raise UserInputError(f"{where} has neither 'sagemaker_role_arn' (terraform/aws) nor 'vertex_service_account' "
                             "(terraform/gcp) among its outputs. To fix: point it at one of this project's terraform folders")
    section = {key: str(outputs[output]) for output, key in mapping.items() if outputs.get(output) not in (None, "")}
    missing = [output for output, key in mapping.items() if key in REQUIRED[backend] and key not in section]
    if missing:
        raise UserInputError(f"{where} lacks the output{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
                             "To fix: use this project's terraform folder unchanged (its outputs.tf), and apply it again")
    return backend, section


def from_terraform(source: Path, profile: str | None = None) -> tuple[Path, str, dict[str, str]]:
    """Write (or update) the profile from a terraform folder or its output file: (file, backend, section).
    Only that cloud's section is replaced; nothing is written when anything is wrong."""
    import yaml

    from launcher import state

    chosen = profile or name()
    if not _NAME.match(chosen):
        raise UserInputError(f"profile name '{chosen}' is not 1-40 lower-case letters, digits, '-' or '_'. To fix: pass such a --profile")
    outputs = terraform_outputs(Path(source))
    backend, section = section_from_outputs(outputs, str(source))
    file = path(chosen)
    current = load(chosen) if file.is_file() else Profile()
    updated = current.model_copy(update={"source": f"launcher config from-terraform {source}",
                                         backend: SECTIONS[backend].model_validate(section)})
    state.write_text(file, "# Written by 'launcher config from-terraform'; the job spec and the environment win over it.\n"
                     + yaml.safe_dump(updated.model_dump(exclude_none=True), sort_keys=False))
    return file, backend, section
