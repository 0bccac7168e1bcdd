"""terraform/aws and terraform/gcp as terraform and the launcher read them: formatted, aws initialised
offline (the provider from a filesystem mirror), valid and passing its own `terraform test` (a mocked
provider), gcp parsed (no google provider can be had here), and both folders naming the outputs
`launcher config from-terraform` reads."""

from __future__ import annotations

import json
import subprocess

import pytest
from infra_tools import REPO_ROOT, aws_provider_mirror, copy_module, iac_tool, offline_env, run_terraform, terraform

from launcher import profile


def test_every_terraform_file_is_formatted():
    done = subprocess.run([terraform(), "fmt", "-check", "-recursive", "-diff", "-no-color", str(REPO_ROOT / "terraform")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"run 'terraform fmt -recursive terraform' to fix:\n{done.stdout}"


@pytest.mark.slow  # 9-17 s: init, validate and four test runs, each starting the provider
def test_aws_initialises_offline_validates_and_passes_its_terraform_tests(tmp_path):
    env = offline_env(tmp_path, aws_provider_mirror())
    module = copy_module("aws", tmp_path)
    run_terraform(["init", "-backend=false", "-input=false"], module, env)
    assert "The configuration is valid" in run_terraform(["validate"], module, env).stdout
    tested = run_terraform(["test"], module, env)
    assert "4 passed, 0 failed" in tested.stdout, tested.stdout


def hcl(folder: str) -> dict:
    """The folder's *.tf files parsed with python-hcl2 (in the lint venv: checkov brings it), merged."""
    script = ("import hcl2, json, pathlib, sys\n"
              "merged = {}\n"
              "for f in sorted(pathlib.Path(sys.argv[1]).glob('*.tf')):\n"
              "    for key, blocks in hcl2.loads(f.read_text()).items():\n"
              "        merged.setdefault(key, []).extend(blocks)\n"
              "print(json.dumps(merged))\n")
    done = subprocess.run([iac_tool("python"), "-c", script, str(REPO_ROOT / "terraform" / folder)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return _unwrap(json.loads(done.stdout))


def _unwrap(value):
    """bc-python-hcl2 (checkov's fork) wraps every attribute's value in a one-item list: unwrap those,
    keep blocks (lists of objects) as lists."""
    if isinstance(value, dict):
        return {key: _unwrap(item[0] if isinstance(item, list) and len(item) == 1 and not isinstance(item[0], dict) else item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    return value


def resources(parsed: dict, kind: str) -> dict:
    return {name: body for block in parsed.get("resource", []) for name, body in block.get(kind, {}).items()}


@pytest.mark.parametrize(("folder", "mapping"), [("aws", profile.AWS_OUTPUTS), ("gcp", profile.GCP_OUTPUTS)])
def test_each_folder_outputs_what_the_profile_reads(folder, mapping):
    outputs = {name for block in hcl(folder)["output"] for name in block}
    assert set(mapping) <= outputs, f"terraform/{folder}/outputs.tf lacks {sorted(set(mapping) - outputs)}"


def test_gcp_bucket_registry_and_service_account_are_locked_down():
    parsed = hcl("gcp")
    bucket = resources(parsed, "google_storage_bucket")["artifacts"]
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"][0]["enabled"] is True
    assert any("capture/" in str(rule["condition"]) for rule in bucket["lifecycle_rule"])
    registry = resources(parsed, "google_artifact_registry_repository")["images"]
    assert registry["format"] == "DOCKER" and registry["docker_config"][0]["immutable_tags"] is True
    roles = [body["role"] for kind in ("google_project_iam_member", "google_storage_bucket_iam_member",
                                       "google_artifact_registry_repository_iam_member", "google_secret_manager_secret_iam_member")
             for body in resources(parsed, kind).values()]
    assert sorted(roles) == sorted(["roles/storage.objectUser", "roles/artifactregistry.reader", "roles/secretmanager.secretAccessor",
                                    "roles/logging.logWriter", "roles/monitoring.metricWriter"])
    project_wide = [body["role"] for body in resources(parsed, "google_project_iam_member").values()]
    assert set(project_wide) == {"roles/logging.logWriter", "roles/monitoring.metricWriter"}  # the rest on their resource
    assert resources(parsed, "google_pubsub_topic") and resources(parsed, "google_secret_manager_secret")
