"""The profile: ``launcher config from-terraform`` on terraform's outputs, and jobs and deploys that find
their region, role, bucket and service account there (after the spec and the environment).

Terraform itself is not needed here: ``terraform output -json`` is given as a file, as a user may pass it
(tests/test_infra_apply.py runs the real folder against moto)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import summary_records, write_jsonl
from typer.testing import CliRunner

from launcher import profile
from launcher.backends import registry
from launcher.cli.main import app
from launcher.errors import NotFoundError, SpecError

ROLE = "arn:aws:iam::123456789012:role/team-sagemaker"
AWS_OUTPUTS = {
    "aws_region": "eu-west-1", "artifacts_bucket": "team-123456789012-eu-west-1", "artifacts_prefix": "ml",
    "sagemaker_role_arn": ROLE, "ecr_repository_url": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team",
    "alerts_topic_arn": "arn:aws:sns:eu-west-1:123456789012:team-alerts",
    "hf_token_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/hf-token-AbCdEf",
    "kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1", "training_log_group": "/aws/sagemaker/TrainingJobs",
}
GCP_OUTPUTS = {
    "gcp_project": "team-project", "gcp_region": "europe-west4", "artifacts_bucket": "team-team-project",
    "artifacts_prefix": "launcher", "vertex_service_account": "team-vertex@team-project.iam.gserviceaccount.com",
    "artifact_registry_repository": "europe-west4-docker.pkg.dev/team-project/team",
    "alerts_topic": "projects/team-project/topics/team-alerts", "hf_token_secret": "projects/team-project/secrets/team-hf-token",
    "project_number": "123456",
}


def terraform_json(values: dict) -> dict:
    """What `terraform output -json` prints for these values."""
    return {key: {"sensitive": False, "type": "string", "value": value} for key, value in values.items()}


@pytest.fixture
def outputs_file(tmp_path):
    def write(values: dict, name: str = "outputs.json"):
        path = tmp_path / name
        path.write_text(json.dumps(terraform_json(values)))
        return path

    return write


@pytest.fixture(autouse=True)
def _no_cloud_environment(monkeypatch):
    for variable in ("LAUNCHER_SAGEMAKER_ROLE_ARN", "LAUNCHER_SAGEMAKER_BUCKET", "AWS_REGION", "AWS_DEFAULT_REGION",
                     "LAUNCHER_VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT", "LAUNCHER_VERTEX_REGION", "GOOGLE_CLOUD_REGION",
                     "LAUNCHER_VERTEX_BUCKET", "LAUNCHER_PROFILE", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no region from this machine's ~/.aws either


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_aws_outputs_become_the_sagemaker_section_and_jobs_use_it(outputs_file):
    result = cli("config", "from-terraform", outputs_file(AWS_OUTPUTS))
    assert result.exit_code == 0, result.output
    assert f"role_arn: {ROLE}" in result.stdout and "put-secret-value" in result.stdout
    shown = json.loads(cli("config", "show", "--json").stdout)
    assert shown["sagemaker"] == {"region": "eu-west-1", "role_arn": ROLE, "bucket": "team-123456789012-eu-west-1", "prefix": "ml",
                                  "image_repository": AWS_OUTPUTS["ecr_repository_url"],
                                  "alerts_topic": AWS_OUTPUTS["alerts_topic_arn"],
                                  "hf_token_secret": AWS_OUTPUTS["hf_token_secret_arn"], "kms_key_arn": AWS_OUTPUTS["kms_key_arn"]}
    place = registry.get("sagemaker")._place({})  # a spec with no sagemaker section, no environment
    assert (place.region, place.role_arn, place.bucket, place.prefix) == ("eu-west-1", ROLE, "team-123456789012-eu-west-1", "ml")
    assert place.uri("jobs") == "s3://team-123456789012-eu-west-1/ml/jobs"


def test_the_spec_wins_over_the_environment_which_wins_over_the_profile(outputs_file, monkeypatch):
    cli("config", "from-terraform", outputs_file(AWS_OUTPUTS))
    backend = registry.get("sagemaker")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_BUCKET", "env-bucket")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    place = backend._place({})
    assert (place.bucket, place.region, place.role_arn) == ("env-bucket", "us-west-2", ROLE)
    place = backend._place({"bucket": "spec-bucket", "region": "ap-south-1", "role_arn": "arn:aws:iam::1:role/spec", "prefix": "mine"})
    assert (place.bucket, place.region, place.role_arn, place.prefix) == ("spec-bucket", "ap-south-1", "arn:aws:iam::1:role/spec", "mine")


def test_the_hub_token_secret_is_recorded_but_a_job_opts_in(outputs_file, tmp_path):
    """terraform makes the secret without a value; a job given it fails even for a public model."""
    from launcher.api import request

    cli("config", "from-terraform", outputs_file(AWS_OUTPUTS))
    write_jsonl(tmp_path / "train.jsonl", summary_records(8))
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"name": "fin", "data": {"train": str(tmp_path / "train.jsonl")}, "compute": {"accelerator": "A10G:1"},
                                "sagemaker": {"script_image": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.8.0"}}))
    built, backend, _ = request(spec, backend="sagemaker")
    body = backend.body(built, backend._place(built.backend_options), {"train": "s3://b/k/"}, "s3://b/bundle.tar.gz")
    assert body["RoleArn"] == ROLE and "LAUNCHER_HF_TOKEN_SECRET" not in body["Environment"]


def test_gcp_outputs_become_the_vertex_section_beside_the_aws_one(outputs_file):
    cli("config", "from-terraform", outputs_file(AWS_OUTPUTS, "aws.json"))
    result = cli("config", "from-terraform", outputs_file(GCP_OUTPUTS, "gcp.json"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["backend"] == "vertex"
    loaded = profile.load()
    assert loaded.sagemaker.role_arn == ROLE  # the other cloud's section is kept
    assert loaded.vertex.service_account == GCP_OUTPUTS["vertex_service_account"]
    vertex = registry.get("vertex")
    place = vertex._place({})
    assert (place.project, place.region, place.bucket) == ("team-project", "europe-west4", "team-team-project")
    from launcher.backends.vertex import service_account

    assert service_account({}) == GCP_OUTPUTS["vertex_service_account"]
    assert service_account({"service_account": "other@p.iam.gserviceaccount.com"}) == "other@p.iam.gserviceaccount.com"


def test_a_named_profile_is_separate_and_must_exist(outputs_file, monkeypatch):
    assert cli("config", "from-terraform", outputs_file(AWS_OUTPUTS), "--profile", "prod").exit_code == 0
    assert profile.load().sagemaker is None  # 'default' was not written
    monkeypatch.setenv("LAUNCHER_PROFILE", "prod")
    assert profile.load().sagemaker.role_arn == ROLE
    monkeypatch.setenv("LAUNCHER_PROFILE", "staging")
    with pytest.raises(NotFoundError, match="profile 'staging' does not exist.*from-terraform DIR --profile staging"):
        registry.get("sagemaker")._place({})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist. To fix: pass the terraform folder you applied"),
        ("not json", "is not JSON"),
        ("{}", "has no outputs: the folder has not been applied"),
        (json.dumps(terraform_json({"bucket_name": "x"})), "has neither 'sagemaker_role_arn' (terraform/aws) nor 'vertex_service_account'"),
        (json.dumps(terraform_json({k: v for k, v in AWS_OUTPUTS.items() if k != "artifacts_bucket"})), "lacks the output artifacts_bucket"),
    ],
)
def test_bad_outputs_are_one_line_exit_2_and_leave_the_profile_as_it_was(outputs_file, tmp_path, content, message):
    cli("config", "from-terraform", outputs_file(AWS_OUTPUTS))
    before = profile.path().read_bytes()
    source = tmp_path / "bad.json"
    if content is not None:
        source.write_text(content)
    result = cli("config", "from-terraform", source)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert profile.path().read_bytes() == before
    assert [p.name for p in profile.path().parent.iterdir()] == ["default.yaml"]  # no temporary file left


def test_a_folder_without_terraform_on_path_says_how_to_pass_the_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = cli("config", "from-terraform", tmp_path)
    assert result.exit_code == 2 and "needs terraform, which is not on PATH" in result.stderr
    assert "output -json > outputs.json" in result.stderr
    assert not profile.path().exists()


def test_a_broken_profile_is_one_line_naming_the_file(monkeypatch):
    path = profile.path()
    path.parent.mkdir(parents=True)
    path.write_text("sagemaker:\n  role: arn:aws:iam::1:role/x\n")
    with pytest.raises(SpecError, match=r"default\.yaml: 'sagemaker.role' is not valid.*from-terraform DIR"):
        registry.get("sagemaker")._place({})
    result = cli("config", "show")
    assert result.exit_code == 2 and "default.yaml: 'sagemaker.role' is not valid" in result.stderr


def test_without_a_profile_the_missing_setting_names_the_profile_command():
    with pytest.raises(SpecError, match="no SageMaker execution role.*launcher config from-terraform terraform/aws"):
        registry.get("sagemaker")._place({"region": "us-east-1"})
    assert "is empty" in cli("config", "show").stdout
