"""``launcher image build|push``: the commands given to the builder, the context it gets, the tag, and the
registry logins through the SDKs (ECR against moto, Artifact Registry through google-auth against a
local token endpoint). No image is built: docker and buildah are stand-ins on PATH that record their
arguments, their standard input and the context folder they were handed."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher import image
from launcher.cli.main import app

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIM = '''#!{python}
import json, os, sys
from pathlib import Path
entry = {{"argv": [os.path.basename(sys.argv[0])] + sys.argv[1:], "stdin": sys.stdin.read()}}
if sys.argv[1] == "build":
    root = Path(sys.argv[-1])
    entry["context"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    entry["mtimes"] = sorted({{int(p.stat().st_mtime) for p in root.rglob("*")}})
with open(os.environ["FAKE_BUILDER_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if sys.argv[1] == os.environ.get("FAKE_BUILDER_FAIL"):
    print("STEP 5/9: RUN pip install ...")
    print("ERROR: No matching distribution found for peft==0.21.2")
    sys.exit(1)
print(sys.argv[1], "done")
'''


@pytest.fixture
def builders(tmp_path, monkeypatch):
    """make('docker', 'buildah'): those stand-ins alone on PATH; returns a function listing their calls."""
    log = tmp_path / "builder.jsonl"
    monkeypatch.setenv("FAKE_BUILDER_LOG", str(log))
    monkeypatch.delenv("LAUNCHER_IMAGE_BUILDER", raising=False)

    def make(*names: str):
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        for name in names:
            shim = folder / name
            shim.write_text(SHIM.format(python=sys.executable))
            shim.chmod(0o755)
        monkeypatch.setenv("PATH", str(folder))
        return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return make


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def expected_context() -> list[str]:
    return list(image.context(REPO_ROOT).files)


def test_build_hands_docker_the_assembled_context_and_a_content_hash_tag(builders):
    calls = builders("docker", "buildah")
    result = cli("image", "build", "train", "--repository", "registry.example.com/team/launcher", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["image"] == f"registry.example.com/team/launcher:{plan['tag']}" and plan["tag"].startswith("train-")
    (call,) = calls()
    argv = call["argv"]
    context_dir = argv[-1]
    assert argv[:2] == ["docker", "build"] and argv[argv.index("--file") + 1] == f"{context_dir}/container/Dockerfile.train"
    assert argv[argv.index("--tag") + 1] == plan["image"] and argv[argv.index("--platform") + 1] == "linux/amd64"
    files = call["context"]
    assert files == expected_context() and len(files) == plan["context_files"]
    assert {"pyproject.toml", "constraints.txt", "container/Dockerfile.serve", "launcher/__init__.py", "entrypoints/train.py"} <= set(files)
    assert not [f for f in files if f.startswith(("tests/", ".git", "terraform/", "examples/")) or "__pycache__" in f or f.endswith(".pyc")]
    assert call["mtimes"] == [0]  # every file and folder of the context: modification time zero
    assert not Path(context_dir).exists()  # the temporary context is gone


def test_the_same_source_is_the_same_tag_and_a_change_is_another(builders, tmp_path):
    builders("docker")
    copy = tmp_path / "src"
    copy.mkdir()
    for entry in image.CONTEXT:
        (shutil.copytree if (REPO_ROOT / entry).is_dir() else shutil.copy2)(REPO_ROOT / entry, copy / entry)
    ours = json.loads(cli("image", "build", "serve", "--dry-run", "--json").stdout)["tag"]
    assert json.loads(cli("image", "build", "serve", "--source", copy, "--dry-run", "--json").stdout)["tag"] == ours
    (copy / "launcher" / "__pycache__").mkdir(exist_ok=True)
    (copy / "launcher" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (copy / "notes.txt").write_text("not in the context")
    assert json.loads(cli("image", "build", "serve", "--source", copy, "--dry-run", "--json").stdout)["tag"] == ours
    assert json.loads(cli("image", "build", "train", "--dry-run", "--json").stdout)["tag"] != ours.replace("serve-", "train-")
    based = json.loads(cli("image", "build", "serve", "--base-image", "vllm/vllm-openai:v0.34.0", "--dry-run", "--json").stdout)
    assert based["tag"] != ours and "BASE_IMAGE=vllm/vllm-openai:v0.34.0" in based["commands"][0]
    (copy / "entrypoints" / "serve.py").write_text((copy / "entrypoints" / "serve.py").read_text() + "\n# changed\n")
    assert json.loads(cli("image", "build", "serve", "--source", copy, "--dry-run", "--json").stdout)["tag"] != ours


def test_buildah_builds_where_it_is_the_only_builder(builders):
    calls = builders("buildah")
    result = cli("image", "build", "serve")
    assert result.exit_code == 0, result.output
    assert "Built launcher:serve-" in result.stdout and "--option serving_image=launcher:serve-" in result.stdout
    argv = calls()[0]["argv"]
    assert argv[:2] == ["buildah", "build"] and argv[argv.index("--file") + 1].endswith("/container/Dockerfile.serve")


def test_no_builder_is_one_line_exit_2(builders):
    builders()  # nothing on PATH
    result = cli("image", "build", "train")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no image builder: neither docker nor buildah is on PATH" in result.stderr
    assert cli("image", "build", "train", "--builder", "podman").exit_code == 2
    assert "unknown image kind 'trian'. Did you mean 'train'?" in cli("image", "build", "trian").stderr


def test_a_failed_build_names_the_builders_last_line(builders, monkeypatch):
    builders("docker")
    monkeypatch.setenv("FAKE_BUILDER_FAIL", "build")
    result = cli("image", "build", "train", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stderr.strip().splitlines()[-1])
    assert "docker build failed (exit 1)" in error["error"] and "No matching distribution found for peft" in error["error"]
    assert "STEP 5/9" in result.stderr  # the builder's output went to stderr, stdout stays the JSON's


@pytest.fixture
def ecr_repository(moto_server):
    import boto3

    return boto3.client("ecr", region_name="us-east-1").create_repository(repositoryName="team")["repository"]["repositoryUri"]


def test_push_logs_in_to_ecr_with_boto3s_token_on_stdin_then_pushes(builders, ecr_repository):
    import boto3

    calls = builders("docker")
    result = cli("image", "push", "train", "--repository", ecr_repository)
    assert result.exit_code == 0, result.output
    login, push = calls()
    token = boto3.client("ecr", region_name="us-east-1").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    host = ecr_repository.split("/")[0]
    assert login["argv"] == ["docker", "login", "--username", user, "--password-stdin", host] and user == "AWS"
    assert login["stdin"] == password and password not in json.dumps(push)
    tag = json.loads(cli("image", "build", "train", "--dry-run", "--json").stdout)["tag"]
    assert push["argv"] == ["docker", "push", f"{ecr_repository}:{tag}"] and f"Pushed {ecr_repository}:{tag}" in result.stdout


def test_a_tag_already_in_ecr_is_not_pushed_again(builders, ecr_repository):
    import boto3

    calls = builders("docker")
    tag = json.loads(cli("image", "build", "serve", "--dry-run", "--json").stdout)["tag"]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": "sha256:" + "0" * 64},
                "layers": []}
    boto3.client("ecr", region_name="us-east-1").put_image(repositoryName="team", imageManifest=json.dumps(manifest), imageTag=tag)
    result = cli("image", "push", "serve", "--repository", ecr_repository)
    assert result.exit_code == 0 and "Nothing to push" in result.stdout and calls() == []


def test_push_takes_the_repository_from_the_profile(builders, ecr_repository, tmp_path):
    calls = builders("docker")
    assert cli("image", "push", "train").exit_code == 2  # no profile, no --repository
    outputs = {"sagemaker_role_arn": "arn:aws:iam::123456789012:role/r", "aws_region": "us-east-1", "artifacts_bucket": "b",
               "ecr_repository_url": ecr_repository}
    (tmp_path / "outputs.json").write_text(json.dumps({k: {"value": v} for k, v in outputs.items()}))
    assert cli("config", "from-terraform", tmp_path / "outputs.json").exit_code == 0
    result = cli("image", "push", "train")
    assert result.exit_code == 0, result.output
    assert calls()[-1]["argv"][2].startswith(f"{ecr_repository}:train-")


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """Google's OAuth token endpoint as a service account's refresh calls it (a JWT-bearer grant, the
    key file's token_uri), answered with an access token."""

    grants: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        from urllib.parse import parse_qs

        body = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.grants.append({key: values[0] for key, values in body.items()})
        answer = json.dumps({"access_token": "ya29.local-test-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):  # quiet
        pass


def test_push_logs_in_to_artifact_registry_with_a_google_auth_token(builders, tmp_path, monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        credentials = tmp_path / "key.json"
        credentials.write_text(json.dumps({"type": "service_account", "project_id": "team-project", "private_key_id": "1",
                                           "private_key": key, "client_email": "pusher@team-project.iam.gserviceaccount.com",
                                           "client_id": "1", "token_uri": f"http://127.0.0.1:{server.server_port}/token"}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
        calls = builders("docker")
        repository = "europe-west4-docker.pkg.dev/team-project/team"
        result = cli("image", "push", "serve", "--repository", repository)
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
    login, push = calls()
    grant = _TokenEndpoint.grants[-1]
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and grant["assertion"].count(".") == 2
    assert login["argv"] == ["docker", "login", "--username", "oauth2accesstoken", "--password-stdin", "europe-west4-docker.pkg.dev"]
    assert login["stdin"] == "ya29.local-test-token"
    assert push["argv"][:2] == ["docker", "push"] and push["argv"][2].startswith(f"{repository}:serve-")


def test_the_dockerignore_lets_in_what_the_launcher_assembles():
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert sorted(line[1:].rstrip("/") for line in lines if line.startswith("!")) == sorted(image.CONTEXT)
