"""terraform/aws for real, against moto: `terraform apply` (the provider's endpoints pointed at the moto
server by an override file, fake credentials), then `launcher config from-terraform`, then a SageMaker job
submitted with that profile alone (no sagemaker: section in the spec, no LAUNCHER_SAGEMAKER_* variables,
no AWS region in the environment) and run by tests/fakes/sagemaker.py, then `terraform destroy`.

Besides the profile the job is told one thing: which AWS deep-learning image runs the source bundle
(LAUNCHER_SAGEMAKER_SCRIPT_IMAGE; sagemaker-core would look it up, and it is not in the dev venv). That
is AWS's image, not a resource terraform makes.

90-135 s here (pytest --durations, two shared cores): about 55 s of it is the AWS provider's own wait for
the bucket's lifecycle rules to settle, which it makes on every create, then the tiny job."""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import SMALL_HP, summary_records, write_jsonl
from infra_tools import aws_provider_mirror, copy_module, offline_env, run_terraform
from typer.testing import CliRunner

from launcher.cli.main import app

pytestmark = pytest.mark.slow
SERVICES = ("s3", "iam", "sts", "kms", "ecr", "sns", "logs", "secretsmanager")
SCRIPT_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"


def moto_override(endpoint: str) -> str:
    """A terraform override file, merged into the copy of terraform/aws: the provider sends every call to
    moto. And one swap: moto 5.2.5 evaluates a bucket policy's Deny without the request's context keys, so
    the TLS-only statement (aws:SecureTransport false; asserted by terraform/aws's own tests and checkov)
    would refuse every call here, HTTPS or not. The policy resource is still created and destroyed, with
    a statement moto can evaluate: the account may read the bucket's location."""
    endpoints = "\n".join(f'    {service} = "{endpoint}"' for service in SERVICES)
    return ('provider "aws" {\n  access_key                  = "testing"\n  secret_key                  = "testing"\n'
            "  skip_credentials_validation = true\n  skip_metadata_api_check     = true\n  s3_use_path_style           = true\n"
            f"  endpoints {{\n{endpoints}\n  }}\n}}\n\n"
            'resource "aws_s3_bucket_policy" "artifacts" {\n'
            '  policy = jsonencode({ Version = "2012-10-17", Statement = [{ Sid = "AccountReadsTheLocation", Effect = "Allow",\n'
            '    Principal = { AWS = "arn:aws:iam::${local.account}:root" }, Action = "s3:GetBucketLocation",\n'
            '    Resource = aws_s3_bucket.artifacts.arn }] })\n}\n')


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_apply_then_a_job_with_the_profile_alone_then_destroy(sagemaker_fake, moto_server, tmp_path, monkeypatch):
    env = offline_env(tmp_path, aws_provider_mirror())
    env.update({"TF_VAR_force_destroy": "true", "TF_VAR_secret_recovery_days": "0", "TF_VAR_region": "us-east-1"})
    module = copy_module("aws", tmp_path)
    (module / "moto_override.tf").write_text(moto_override(moto_server))
    run_terraform(["init", "-input=false"], module, env)
    applied = False
    try:
        run_terraform(["apply", "-auto-approve", "-input=false"], module, env)
        applied = True
        outputs = json.loads(run_terraform(["output", "-json"], module, env).stdout)
        role, bucket = outputs["sagemaker_role_arn"]["value"], outputs["artifacts_bucket"]["value"]

        # What terraform made is what moto now holds.
        s3 = boto3.client("s3", region_name="us-east-1")
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == outputs["kms_key_arn"]["value"]
        repository = boto3.client("ecr", region_name="us-east-1").describe_repositories(repositoryNames=["launcher"])["repositories"][0]
        assert repository["imageTagMutability"] == "IMMUTABLE" and repository["imageScanningConfiguration"]["scanOnPush"]
        policy = boto3.client("iam").get_role_policy(RoleName=role.rsplit("/", 1)[1], PolicyName="launcher-sagemaker")["PolicyDocument"]
        actions = [a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
        assert "s3:PutObject" in actions and not [a for a in actions if "*" in a]

        monkeypatch.setenv("TF_CLI_CONFIG_FILE", env["TF_CLI_CONFIG_FILE"])  # the launcher runs `terraform output` itself
        result = cli("config", "from-terraform", module)
        assert result.exit_code == 0, result.output
        assert f"role_arn: {role}" in result.stdout and f"bucket: {bucket}" in result.stdout

        # The job: nothing about where it runs but the profile.
        for variable in ("LAUNCHER_SAGEMAKER_ROLE_ARN", "LAUNCHER_SAGEMAKER_BUCKET", "AWS_REGION", "AWS_DEFAULT_REGION"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("LAUNCHER_SAGEMAKER_SCRIPT_IMAGE", SCRIPT_IMAGE)
        write_jsonl(tmp_path / "train.jsonl", summary_records(48))
        training = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in SMALL_HP.items()}
        spec = tmp_path / "fin.yaml"
        spec.write_text(json.dumps({"name": "fin", "data": {"train": str(tmp_path / "train.jsonl")}, "training": training,
                                    "compute": {"accelerator": "A10G:1", "max_runtime": "1h"}}))
        result = cli("train", spec, "--backend", "sagemaker")
        assert result.exit_code == 0, result.output
        assert "SUCCEEDED" in result.stdout and "step 12/12 loss" in result.stdout
        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        (summary,) = sagemaker.list_training_jobs()["TrainingJobSummaries"]
        job = sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
        assert job["RoleArn"] == role
        assert job["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{bucket}/launcher/jobs/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(k.startswith("launcher/bundles/") for k in keys) and any(k.endswith("/output/model.tar.gz") for k in keys)
    finally:
        if applied:
            run_terraform(["destroy", "-auto-approve", "-input=false"], module, env)
    assert bucket not in [b["Name"] for b in boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"]]
    assert [r["RoleName"] for r in boto3.client("iam", region_name="us-east-1").list_roles()["Roles"] if r["RoleName"] == "launcher-sagemaker"] == []
    state = json.loads((module / "terraform.tfstate").read_text())
    assert state["resources"] == []
