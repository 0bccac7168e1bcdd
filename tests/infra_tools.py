"""What the terraform and lint tests share: finding terraform, the provider mirror and the lint venv, and
running terraform offline. A missing tool is a pytest skip that says what is missing and how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where the machine images keep terraform providers (NOTES: a filesystem mirror with hashicorp/aws only).
PLUGIN_DIRS = ("/opt/tf-plugins", "/usr/share/terraform/plugins", str(Path.home() / ".terraform.d" / "plugins"))
IAC_VENV = Path(os.environ.get("LAUNCHER_IAC_VENV") or REPO_ROOT / ".venv-iac")


def terraform() -> str:
    found = shutil.which("terraform")
    if found is None:
        pytest.skip("terraform is not on PATH: install terraform >= 1.7 to run the terraform checks")
    return found


def aws_provider_mirror() -> Path:
    """A filesystem mirror holding registry.terraform.io/hashicorp/aws 5.x (LAUNCHER_TF_PLUGIN_DIR, else the usual places)."""
    candidates = [os.environ["LAUNCHER_TF_PLUGIN_DIR"]] if os.environ.get("LAUNCHER_TF_PLUGIN_DIR") else PLUGIN_DIRS
    for folder in map(Path, candidates):
        if any((folder / "registry.terraform.io" / "hashicorp" / "aws").glob("5.*")):
            return folder
    pytest.skip(f"no hashicorp/aws 5.x provider in a filesystem mirror (looked in {', '.join(candidates)}): "
                "set LAUNCHER_TF_PLUGIN_DIR to one (terraform providers mirror DIR makes one)")


def offline_env(tmp_path: Path, mirror: Path) -> dict[str, str]:
    """The environment for terraform with a CLI config that installs hashicorp/* from ``mirror`` only."""
    config = tmp_path / "terraformrc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["registry.terraform.io/hashicorp/*"]\n  }}\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
    )
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}


def copy_module(name: str, into: Path) -> Path:
    """terraform/<name> copied into ``into`` (init and state write there, not into the checkout)."""
    target = into / name
    shutil.copytree(REPO_ROOT / "terraform" / name, target, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return target


def run_terraform(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([terraform(), *args, "-no-color"], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"terraform {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def iac_tool(name: str) -> str:
    """A tool of the lint venv (checkov, hadolint, its python), made by 'make iac-venv'."""
    path = IAC_VENV / "bin" / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed in {IAC_VENV}: run 'make iac-venv' (checkov pins an old boto3, so it has its own venv)")
    return str(path)
