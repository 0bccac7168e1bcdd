"""SageMaker deploy end to end through the CLI, against moto and tests/fakes/sagemaker_endpoints.py (the
endpoint's container is the real serving entrypoint on this machine): deploy a finished SageMaker job by
id, invoke (and --stream), capture records in S3 in SageMaker's layout (one per request), re-deploy = re-attach, a new
model = UpdateEndpoint, autoscaling registered and removed, undeploy removes everything; the local contract check failing fast with nothing
created; a Failed endpoint's reason and log lines; quota and permission refusals in one line; a lost
CreateEndpoint answer not making a second endpoint; a bad option creating nothing."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from launcher.cli.main import app

ROLE = "arn:aws:iam::123456789012:role/launcher-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/launcher-serve:1"
JOB_ID = "claims-0123456789ab-run1"
PROMPT = "Client Bob Chen, age 40, risk moderate, cash $5,000."


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def aws(sagemaker_endpoints, monkeypatch):
    """The bucket, role and serving image a deploy needs; the repository on the containers' PYTHONPATH."""
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_BUCKET", "ml-bucket")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_SERVING_IMAGE", IMAGE)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    monkeypatch.setenv("LAUNCHER_DEPLOY_TIMEOUT", "120")
    boto3.client("s3").create_bucket(Bucket="ml-bucket")
    return sagemaker_endpoints


def finished_sagemaker_job(model_dir: Path) -> str:
    """A Completed SageMaker training job (moto's: Completed at once) whose model.tar.gz holds ``model_dir``;
    its ModelArtifacts URI."""
    sagemaker = boto3.client("sagemaker")
    name = f"{JOB_ID}-a1"
    sagemaker.create_training_job(
        TrainingJobName=name, RoleArn=ROLE, AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://ml-bucket/launcher/jobs/{JOB_ID}/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600}, Tags=[{"Key": "launcher-job-id", "Value": JOB_ID}])
    uri = sagemaker.describe_training_job(TrainingJobName=name)["ModelArtifacts"]["S3ModelArtifacts"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(model_dir.iterdir()):
            tar.add(child, arcname=child.name)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return uri


def resources() -> dict[str, list[str]]:
    sagemaker = boto3.client("sagemaker")
    return {"models": [m["ModelName"] for m in sagemaker.list_models()["Models"]],
            "configs": [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]],
            "endpoints": [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]]}


def capture_objects(prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket="ml-bucket", Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.slow
def test_sagemaker_deploy_lifecycle_through_the_cli(aws, finished_job, tmp_path):
    from launcher.capture import parse

    artifact = finished_sagemaker_job(finished_job / "model")
    deployed = cli("deploy", JOB_ID, "--backend", "sagemaker", "--option", "max_instances=3", "--option", "invocations_per_instance=50",
                   "--json")
    assert deployed.exit_code == 0, deployed.output
    endpoint = json.loads(deployed.stdout)
    assert endpoint["name"] == JOB_ID and endpoint["state"] == "InService" and endpoint["backend"] == "sagemaker"
    assert endpoint["url"] == f"https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/{JOB_ID}/invocations"
    sagemaker = boto3.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=JOB_ID)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["InitialInstanceCount"] == 1  # past moto's ml.g5 gap
    assert config["DataCaptureConfig"]["DestinationS3Uri"] == "s3://ml-bucket/launcher/capture"
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 100
    assert {o["CaptureMode"] for o in config["DataCaptureConfig"]["CaptureOptions"]} == {"Input", "Output"}
    container = sagemaker.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert container["ModelDataUrl"] == artifact and container["Image"] == IMAGE  # the job's own model.tar.gz
    assert not capture_objects("launcher/models/")  # nothing re-uploaded
    assert set(container["Environment"]) == {  # settings only: no key, token or secret value travels
        "LAUNCHER_BEHIND_PLATFORM_AUTH", "LAUNCHER_SERVE_HOST", "LAUNCHER_ENDPOINT_NAME", "LAUNCHER_MAX_NEW_TOKENS_CAP",
        "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM"}

    answers = []
    for _ in range(2):
        answer = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8", "--json")
        assert answer.exit_code == 0, answer.output
        answers.append(json.loads(answer.stdout)["choices"][0]["message"]["content"])
    refused = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "100000")
    assert refused.exit_code == 2, refused.stderr
    assert "above this endpoint's cap of 1024" in refused.stderr  # the container's own 400
    streamed = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8", "--stream", "--json")  # InvokeEndpointWithResponseStream
    assert streamed.exit_code == 0, streamed.output
    pieces = [json.loads(line)["text"] for line in streamed.stdout.splitlines()]
    assert len(pieces) > 1 and "".join(pieces) == answers[0]  # piece by piece, the same greedy answer
    assert ("InvokeEndpointWithResponseStream", JOB_ID) in aws.calls

    scaling = boto3.client("application-autoscaling")
    target, = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (f"endpoint/{JOB_ID}/variant/AllTraffic", 1, 3)
    policy, = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 50 and tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"

    again = cli("deploy", JOB_ID, "--backend", "sagemaker", "--json")  # without max_instances: no autoscaling
    assert again.exit_code == 0 and json.loads(again.stdout)["reattached"] is True
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert [c for c in aws.calls if c[0] == "CreateEndpoint"] == [("CreateEndpoint", JOB_ID)]
    assert len(resources()["models"]) == 1 and len(resources()["configs"]) == 1

    # A new model under the same name: blue/green UpdateEndpoint to a new config; the old one is deleted.
    newer = tmp_path / "newer-model"
    shutil.copytree(finished_job / "model", newer)
    (newer / "notes.txt").write_text("a retrained model\n")
    updated = cli("deploy", newer, "--backend", "sagemaker", "--name", JOB_ID, "--json")
    assert updated.exit_code == 0, updated.output
    assert ("UpdateEndpoint", JOB_ID) in aws.calls and len([c for c in aws.calls if c[0] == "CreateEndpoint"]) == 1
    now = sagemaker.describe_endpoint(EndpointName=JOB_ID)
    assert now["EndpointStatus"] == "InService" and now["EndpointConfigName"] != described["EndpointConfigName"]
    assert resources()["configs"] == [now["EndpointConfigName"]] and len(resources()["models"]) == 1
    uploaded = capture_objects("launcher/models/")
    assert len(uploaded) == 1 and uploaded[0].endswith("/model.tar.gz")  # the local dir, content-addressed
    assert len(aws.containers(JOB_ID)) == 2
    old_fleet = aws.containers(JOB_ID)[0].process
    deadline = time.monotonic() + 60
    while old_fleet.alive():  # InService comes first; the old fleet then drains and stops, as on SageMaker
        assert time.monotonic() < deadline, "the old endpoint config's container still runs"
        time.sleep(0.2)
    assert cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8").exit_code == 0

    listed = json.loads(cli("endpoints", "--json").stdout)
    assert [(e["name"], e["backend"], e["state"]) for e in listed] == [(JOB_ID, "sagemaker", "InService")]

    assert cli("deploy", newer, "--backend", "sagemaker", "--name", JOB_ID, "--option", "max_instances=2").exit_code == 0
    assert len(scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]) == 1
    stopped = cli("undeploy", JOB_ID, "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout)["state"] == "Stopped"
    assert resources() == {"models": [], "configs": [], "endpoints": []}
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []  # deregistered first
    keys = capture_objects(f"launcher/capture/{JOB_ID}/AllTraffic/")
    assert keys and all(re.fullmatch(rf"launcher/capture/{JOB_ID}/AllTraffic/\d{{4}}/\d\d/\d\d/\d\d/[\w-]+\.jsonl", k) for k in keys)
    s3 = boto3.client("s3")
    records = [parse(line) for k in keys for line in s3.get_object(Bucket="ml-bucket", Key=k)["Body"].read().decode().splitlines()]
    assert len(records) == 5  # two answers, the refusal, the stream (whole), the answer after the update
    assert sorted(r.status for r in records) == [200, 200, 200, 200, 400]
    assert sum(json.loads(r.output_bytes()).get("object") == "chat.completion" for r in records) == 4
    assert all(r.inference_id for r in records)  # InvokeEndpoint's InferenceId reached the container
    assert {json.loads(r.input_bytes())["messages"][0]["content"] for r in records} == {PROMPT}
    gone = cli("invoke", JOB_ID, PROMPT)
    assert gone.exit_code != 0


def test_the_local_contract_check_fails_fast_and_creates_nothing(aws, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")  # an adapter naming no base model
    failed = cli("deploy", tmp_path, "--backend", "sagemaker", "--name", "broken")
    assert failed.exit_code == 1
    assert "serving contract check" in failed.stderr and "nothing was created on sagemaker" in failed.stderr
    assert "names no base model" in failed.stderr  # the server's own last log lines
    assert resources() == {"models": [], "configs": [], "endpoints": []} and [c for c in aws.calls if not c[0].startswith("Invoke")] == []
    assert capture_objects("") == []  # nothing uploaded either


def test_a_failed_endpoint_says_why_with_its_log_lines(aws, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    failed = cli("deploy", tmp_path, "--backend", "sagemaker", "--name", "broken", "--no-local-check")
    assert failed.exit_code == 1
    assert "SageMaker endpoint 'broken' is Failed: The primary container for production variant AllTraffic did not pass" in failed.stderr
    assert "names no base model" in failed.stderr  # from CloudWatch Logs /aws/sagemaker/Endpoints/broken
    assert json.loads(cli("endpoints", "--json").stdout)[0]["state"] == "Failed"
    assert cli("undeploy", "broken").exit_code == 0
    assert resources() == {"models": [], "configs": [], "endpoints": []}


def test_quota_and_permission_refusals_are_one_line(aws, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    aws.refuse_quota("ml.g5.xlarge", limit=0)
    quota = cli("deploy", tmp_path, "--backend", "sagemaker", "--name", "q1", "--no-local-check")
    assert quota.exit_code == 1 and quota.stderr.count("\n") == 1
    assert "quota 'ml.g5.xlarge for endpoint usage' is 0" in quota.stderr and "Service Quotas" in quota.stderr
    assert resources() == {"models": [], "configs": [], "endpoints": []}  # a refused endpoint leaves nothing behind
    aws.deny("CreateModel")
    denied = cli("deploy", tmp_path, "--backend", "sagemaker", "--name", "p1", "--no-local-check", "--option", "instance_type=ml.g6.xlarge")
    assert denied.exit_code == 1 and denied.stderr.count("\n") == 1
    assert "AWS denied sagemaker:CreateModel" in denied.stderr and "To fix: allow sagemaker:CreateModel" in denied.stderr
    assert resources()["endpoints"] == []


def test_bad_options_are_one_line_and_create_nothing(aws, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    typo = cli("deploy", tmp_path, "--backend", "sagemaker", "--option", "instance_typ=ml.g5.xlarge")
    assert typo.exit_code == 2 and "--option instance_typ is not a SageMaker deploy setting" in typo.stderr
    assert "instance_type" in typo.stderr and typo.stderr.count("\n") == 1
    count = cli("deploy", tmp_path, "--backend", "sagemaker", "--option", "instance_count=0")
    assert count.exit_code == 2 and "must be at least 1" in count.stderr
    scale = cli("deploy", tmp_path, "--backend", "sagemaker", "--option", "instance_count=2", "--option", "max_instances=1")
    assert scale.exit_code == 2 and "max_instances=1 is below instance_count=2" in scale.stderr
    target = cli("deploy", tmp_path, "--backend", "sagemaker", "--option", "invocations_per_instance=lots")
    assert target.exit_code == 2 and "needs a positive number and max_instances" in target.stderr
    monkeypatch.delenv("LAUNCHER_SAGEMAKER_SERVING_IMAGE")
    no_image = cli("deploy", tmp_path, "--backend", "sagemaker")
    assert no_image.exit_code == 2 and "no serving image for SageMaker" in no_image.stderr
    assert cli("invoke", "ghost", "hi", "--backend", "sagemaker").exit_code == 2
    assert cli("undeploy", "ghost", "--backend", "sagemaker").exit_code == 2
    assert resources() == {"models": [], "configs": [], "endpoints": []} and [c for c in aws.calls if not c[0].startswith("Invoke")] == []


@pytest.mark.slow
def test_a_lost_create_endpoint_answer_makes_no_second_endpoint(aws, finished_job):
    """CreateEndpoint reaches SageMaker, then the connection drops before the answer: the retry looks the
    name up and finds it, so there is one endpoint (SageMaker has no idempotency token)."""
    import botocore.exceptions

    from launcher import clouds

    lost = []

    def drop_answer(http_response, parsed, model, **_):
        if not lost:
            lost.append(model.name)
            raise botocore.exceptions.ConnectionClosedError(endpoint_url="http://moto")

    clouds.aws_client("sagemaker", "us-east-1").meta.events.register("after-call.sagemaker.CreateEndpoint", drop_answer)
    deployed = cli("deploy", finished_job / "model", "--backend", "sagemaker", "--name", "lossy", "--no-local-check", "--json")
    assert deployed.exit_code == 0, deployed.output
    assert lost == ["CreateEndpoint"] and json.loads(deployed.stdout)["state"] == "InService"
    assert [c for c in aws.calls if c[0] == "CreateEndpoint"] == [("CreateEndpoint", "lossy")]
    assert resources()["endpoints"] == ["lossy"]
    assert cli("undeploy", "lossy").exit_code == 0


def test_an_endpoint_deployed_in_another_region_is_found_there(aws, finished_job, tmp_path):
    """--option region=... at deploy: invoke and undeploy look the endpoint up in that region, not in the
    environment's (the endpoint index records where it went)."""
    model = tmp_path / "model"
    shutil.copytree(finished_job / "model", model)
    deployed = cli("deploy", model, "--backend", "sagemaker", "--name", "west", "--no-local-check", "--option", "region=us-west-2")
    assert deployed.exit_code == 0, deployed.output
    west = boto3.client("sagemaker", region_name="us-west-2")
    assert [e["EndpointName"] for e in west.list_endpoints()["Endpoints"]] == ["west"] and resources()["endpoints"] == []
    answered = cli("invoke", "west", PROMPT, "--max-tokens", "8", "--json")
    assert answered.exit_code == 0, answered.output
    assert json.loads(answered.stdout)["choices"][0]["message"]["content"]
    assert cli("undeploy", "west").exit_code == 0
    assert west.list_endpoints()["Endpoints"] == [] and west.list_models()["Models"] == []
