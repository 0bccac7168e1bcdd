"""The infrastructure passes its linters: checkov on terraform/aws, terraform/gcp and both Dockerfiles
(zero failed checks; every skipped one justified where it is skipped), hadolint on both Dockerfiles.
Both run from the lint venv that 'make iac-venv' makes (checkov pins an old boto3). And the Dockerfiles
are the images the backends' custom-image mode names."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from infra_tools import REPO_ROOT, iac_tool

DOCKERFILES = ["container/Dockerfile.train", "container/Dockerfile.serve"]


def checkov(*args: str) -> dict:
    done = subprocess.run([iac_tool("checkov"), *args, "--skip-download", "-o", "json", "--quiet"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    merged = {"failed_checks": [], "skipped_checks": [], "parsing_errors": []}
    for one in reports:
        for key in merged:
            merged[key] += one.get("results", {}).get(key, [])
    return merged


@pytest.mark.parametrize("target", [["-d", "terraform/aws", "--framework", "terraform"],
                                    ["-d", "terraform/gcp", "--framework", "terraform"],
                                    ["--framework", "dockerfile", *(arg for f in DOCKERFILES for arg in ("-f", f))]],
                         ids=["terraform-aws", "terraform-gcp", "dockerfiles"])
def test_checkov_finds_nothing_and_every_skip_says_why(target):
    results = checkov(*target)
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})" for c in results["failed_checks"]]
    assert not failed and not results["parsing_errors"], failed or results["parsing_errors"]
    unjustified = [c["check_id"] for c in results["skipped_checks"] if len((c["check_result"].get("suppress_comment") or "").strip()) < 20]
    assert not unjustified, f"skipped without a reason in the checkov:skip comment: {unjustified}"


def test_hadolint_passes_both_dockerfiles():
    done = subprocess.run([iac_tool("hadolint"), "--no-color", *DOCKERFILES], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO_ROOT / dockerfile).read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize(("dockerfile", "module"), [("container/Dockerfile.train", "entrypoints.train"),
                                                     ("container/Dockerfile.serve", "entrypoints.serve")])
def test_each_image_runs_its_entrypoint_as_a_user_of_its_own_on_a_pinned_base(dockerfile, module):
    steps = instructions(dockerfile)
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    assert entrypoint[-2:] == ["-m", module]
    users = [value for kind, value in steps if kind == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    base = next(value for kind, value in steps if kind == "ARG" and value.startswith("BASE_IMAGE="))
    assert re.search(r":v?\d+\.\d+", base) and "latest" not in base
    assert dict(steps)["FROM"] == "${BASE_IMAGE}"


def test_the_serving_images_pins_are_the_dev_locks():
    lock = dict(line.split("==", 1) for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    pins = [line for line in (REPO_ROOT / "container/requirements-serve.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all(lock.get(name) == version for name, version in (pin.split("==") for pin in pins)), pins


def test_the_backends_name_dockerfiles_that_exist():
    """What the custom-image mode's docstrings and error messages point at (sagemaker.image_uri,
    vertex.image_uri, --option serving_image) is a real file here."""
    named = set()
    for path in (REPO_ROOT / "launcher").rglob("*.py"):
        named |= set(re.findall(r"container/Dockerfile\.\w+", path.read_text()))
    for path in ("launcher/backends/sagemaker.py", "launcher/backends/vertex.py", "launcher/backends/_sagemaker_serving.py",
                 "launcher/backends/_vertex_serving.py"):
        assert "container/Dockerfile." in (REPO_ROOT / path).read_text(), path
    assert named == set(DOCKERFILES) and all((REPO_ROOT / name).is_file() for name in named)
