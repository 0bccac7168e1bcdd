"""The SageMaker backend against moto's server through real boto3: the request it sends, staging once,
idempotent submission (a lost create answer included), states, errors at the border, logs, artifacts."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
import time
from pathlib import Path

import boto3
import pytest

from launcher import api
from launcher.backends import sagemaker as sm
from launcher.backends.base import JobRef, JobState
from launcher.errors import BackendError, MissingExtraError, SpecError

ROLE = "arn:aws:iam::123456789012:role/launcher-sagemaker"
SECRET = "hf_THIS-VALUE-MUST-NEVER-TRAVEL"


@pytest.fixture
def aws(moto_server, tmp_path, monkeypatch):
    """moto's server with a bucket, a Hub-token secret and a job spec for the sagemaker backend."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ml-bucket")
    secret = boto3.client("secretsmanager").create_secret(Name="hf-token", SecretString=SECRET)["ARN"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    spec = {
        "name": "fin", "data": {"train": "data/train.jsonl"}, "training": {"lora_r": 8, "epochs": 1},
        "compute": {"accelerator": "A10G:1", "spot": True, "max_runtime": "2h"}, "tags": {"team": "risk"},
        "sagemaker": {"region": "us-east-1", "role_arn": ROLE, "bucket": "ml-bucket", "image_uri": "123.dkr.ecr.us-east-1.amazonaws.com/launcher:1",
                      "hf_token_secret": secret, "subnets": ["subnet-1"], "security_group_ids": ["sg-1"], "max_retries": 2,
                      "kms_key_id": "alias/launcher"},
    }
    (tmp_path / "job.yaml").write_text(json.dumps(spec))
    return tmp_path / "job.yaml"


def calls(operation: str) -> list[dict]:
    """Record every request boto3 sends for ``operation`` (the real client, before it is serialised)."""
    from launcher import clouds

    seen: list[dict] = []
    service = {"CreateTrainingJob": "sagemaker", "PutObject": "s3"}[operation]
    clouds.aws_client(service).meta.events.register(f"provide-client-params.{service}.{operation}", lambda params, **kw: seen.append(dict(params)))
    return seen


def test_the_create_request_carries_every_setting_and_no_secret_value(aws):
    sent = calls("CreateTrainingJob")
    handle = api.launch(aws, backend="sagemaker")
    assert len(sent) == 1
    body = sent[0]
    assert body["TrainingJobName"] == f"{handle.job_id}-a1" and len(body["TrainingJobName"]) <= 63
    assert body["AlgorithmSpecification"]["TrainingImage"] == "123.dkr.ecr.us-east-1.amazonaws.com/launcher:1"
    assert body["RoleArn"] == ROLE
    assert body["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100, "VolumeKmsKeyId": "alias/launcher"}
    assert body["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert body["EnableManagedSpotTraining"] is True
    assert body["CheckpointConfig"] == {"S3Uri": f"s3://ml-bucket/launcher/jobs/{handle.job_id}/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    assert body["OutputDataConfig"] == {"S3OutputPath": f"s3://ml-bucket/launcher/jobs/{handle.job_id}/output", "KmsKeyId": "alias/launcher"}
    assert body["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]} and body["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert body["HyperParameters"] == {"launcher_schema": "1", "launcher_version": body["HyperParameters"]["launcher_version"],
                                       "lora_r": "8", "epochs": "1"}  # a custom image: no script-mode keys
    assert {t["Key"]: t["Value"] for t in body["Tags"]} == {"team": "risk", "launcher-job-id": handle.job_id, "launcher-run": "run1", "launcher-attempt": "1"}
    channel = body["InputDataConfig"][0]
    assert channel["ChannelName"] == "train" and channel["DataSource"]["S3DataSource"]["S3Uri"].startswith("s3://ml-bucket/launcher/data/")
    assert body["Environment"]["LAUNCHER_HF_TOKEN_SECRET"].startswith("arn:aws:secretsmanager:")
    assert SECRET not in json.dumps(body, default=str)
    assert {m["Name"] for m in body["AlgorithmSpecification"]["MetricDefinitions"]} >= {"train:loss", "eval:loss_tuned"}


def test_data_and_code_are_uploaded_once(aws, monkeypatch):
    spec = json.loads(aws.read_text())
    del spec["sagemaker"]["image_uri"]  # AWS's image running the source bundle
    aws.write_text(json.dumps(spec))
    dlc = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_SCRIPT_IMAGE", dlc)
    puts = calls("PutObject")
    first = api.launch(aws, backend="sagemaker")
    assert sorted(p["Key"].rsplit("/", 1)[-1] for p in puts) == sorted(["train.jsonl", "_complete", puts[-1]["Key"].rsplit("/", 1)[-1]])
    assert puts[-1]["Key"].startswith("launcher/bundles/")
    from launcher import bundle

    code = f"s3://ml-bucket/launcher/bundles/{bundle.build().name}"
    job = sm.SageMakerBackend()._describe(first.ref)
    assert job["AlgorithmSpecification"]["TrainingImage"] == dlc
    hyper = job["HyperParameters"]
    assert hyper["sagemaker_submit_directory"] == code and hyper["sagemaker_program"] == "launcher_train.py"
    archive = boto3.client("s3").get_object(Bucket="ml-bucket", Key=code.removeprefix("s3://ml-bucket/"))["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert {"launcher_train.py", "requirements.txt", "entrypoints/train.py", "launcher/spec.py"} <= set(names)
    puts.clear()
    second = api.launch(aws, backend="sagemaker", run_name="run2")  # another job, the same data and code
    assert second.job_id != first.job_id and puts == []


def test_a_retried_launch_never_creates_a_second_job(aws, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # the region is the spec's alone: the look-up must use it too
    first = api.launch(aws, backend="sagemaker")
    again = api.launch(aws, backend="sagemaker")  # moto completes jobs at once: re-attaches to SUCCEEDED
    assert again.reattached and again.job_id == first.job_id
    assert [j["TrainingJobName"] for j in boto3.client("sagemaker", region_name="us-east-1").list_training_jobs()["TrainingJobSummaries"]] == [f"{first.job_id}-a1"]


def test_a_create_whose_answer_was_lost_re_attaches(aws):
    """The server created the job, then the connection dropped: the retry finds it, and makes none."""
    from botocore.exceptions import ConnectionClosedError

    from launcher import clouds

    def drop(**kwargs):
        raise ConnectionClosedError(endpoint_url="moto")

    clouds.aws_client("sagemaker").meta.events.register_first("after-call.sagemaker.CreateTrainingJob", drop)
    handle = api.launch(aws, backend="sagemaker")
    assert handle.reattached
    assert len(boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]) == 1


def test_attach_from_another_home_finds_the_job_and_reads_its_artifacts(aws, tmp_path, monkeypatch, finished_job):
    handle = api.launch(aws, backend="sagemaker")
    info = handle.status()
    assert info.state is JobState.SUCCEEDED and info.output.endswith("/output/model.tar.gz")
    assert "/aws/sagemaker/TrainingJobs" in info.extra["logs"] and info.extra["console"].startswith("https://us-east-1.console.aws.amazon.com/")
    # What SageMaker uploads at the end: the model dir as model.tar.gz, files at its root.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path in (finished_job / "model").iterdir():
            tar.add(path, arcname=path.name)
    bucket, key = info.output.removeprefix("s3://").split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=raw.getvalue())
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "elsewhere"))
    other = api.attach(handle.job_id)
    assert other.backend.name == "sagemaker" and other.ref.native_id == f"{handle.job_id}-a1"
    assert other.metrics()["quality"] == json.loads((finished_job / "model/metrics.json").read_text())["quality"]


def test_logs_come_from_every_stream_of_the_job(aws):
    handle = api.launch(aws, backend="sagemaker")
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=sm.LOG_GROUP)
    for n, stream in enumerate((f"{handle.ref.native_id}/algo-1-100", f"{handle.ref.native_id}/algo-1-200")):
        logs.create_log_stream(logGroupName=sm.LOG_GROUP, logStreamName=stream)
        logs.put_log_events(logGroupName=sm.LOG_GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": int(time.time() * 1000) + n * 10 + i, "message": f"attempt {n} line {i}"} for i in range(3)])
    assert list(handle.logs()) == [f"attempt {n} line {i}" for n in range(2) for i in range(3)]
    assert list(handle.logs(follow=True)) == list(handle.logs())  # a finished job: follow ends


@pytest.mark.parametrize("job,state,message", [
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Downloading"}, JobState.PENDING, "Downloading"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}, JobState.RUNNING, ""),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Interrupted"}, JobState.RUNNING, "spot capacity was reclaimed"),
    ({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training",
      "SecondaryStatusTransitions": [{"Status": "Training"}, {"Status": "Interrupted"}, {"Status": "Restarting"}, {"Status": "Training"}]},
     JobState.RUNNING, "platform attempt 2"),
    ({"TrainingJobStatus": "Completed", "TrainingTimeInSeconds": 1000, "BillableTimeInSeconds": 300, "EnableManagedSpotTraining": True},
     JobState.SUCCEEDED, "trained 1000 s, billed 300 s (spot saved 70%)"),
    ({"TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: base model 'x' cannot be loaded\nTraceback ..."}, JobState.FAILED,
     "AlgorithmError: base model 'x' cannot be loaded"),
    ({"TrainingJobStatus": "Stopping"}, JobState.STOPPING, "stop requested"),
    ({"TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped"}, JobState.CANCELLED, "stopped by user"),
    ({"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxWaitTimeExceeded"}, JobState.INTERRUPTED, "submit it again to resume"),
])
def test_states_map_onto_the_shared_enum(job, state, message):
    got, text = sm.job_state(job)
    assert got is state and (message in text if message else text == "")
    assert not (got is JobState.RUNNING and "restart" in text) or got.active  # a platform restart is still active


def error_response(code: str, message: str, status: int = 400):
    """A botocore before-send handler answering with SageMaker's JSON error shape."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **kwargs):
            yield json.dumps({"__type": code, "message": message}).encode()

    def handler(**kwargs):
        return AWSResponse(kwargs["request"].url, status, {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"}, Raw())

    return handler


@pytest.mark.parametrize("code,message,expected", [
    ("ResourceLimitExceeded", "The account-level service limit 'ml.g5.xlarge for spot training job usage' is 0 Instances, with current "
     "utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an increase for this quota.",
     r"quota 'ml.g5.xlarge for spot training job usage' is 0\. To fix: request an increase in Service Quotas"),
    ("AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/dev/me is not authorized to perform: iam:PassRole on resource: role",
     r"AWS denied iam:PassRole .* to arn:aws:sts::123456789012:assumed-role/dev/me\. To fix: allow iam:PassRole"),
    ("ValidationException", "1 validation error detected: Value 'ml.g9.huge' at 'resourceConfig.instanceType' failed to satisfy constraint: InstanceType",
     r"To fix: change compute.accelerator \(or compute.instance_type\) in the spec"),
])
def test_sagemaker_errors_name_the_quota_the_action_or_the_spec_key(aws, code, message, expected):
    from launcher import clouds

    clouds.aws_client("sagemaker").meta.events.register_first("before-send.sagemaker.CreateTrainingJob", error_response(code, message))
    with pytest.raises((BackendError, SpecError), match=expected) as caught:
        api.launch(aws, backend="sagemaker")
    assert "\n" not in str(caught.value)
    assert boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_missing_settings_and_images_are_refused_before_anything_is_staged(aws, monkeypatch):
    spec = json.loads(aws.read_text())
    spec["sagemaker"].pop("role_arn")
    aws.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match="no SageMaker execution role. To fix: set sagemaker.role_arn"):
        api.launch(aws, backend="sagemaker")
    spec["sagemaker"]["role_arn"] = ROLE
    spec["sagemaker"].pop("image_uri")
    aws.write_text(json.dumps(spec))
    with pytest.raises(MissingExtraError, match=r"sagemaker-core.*launcher\[sagemaker-images\]"):
        api.launch(aws, backend="sagemaker")
    spec["sagemaker"]["image_uri"] = "img"
    spec["compute"] = {"accelerator": "H200:8", "spot": True}
    aws.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match="no managed spot training on ml.p5e.48xlarge"):
        api.launch(aws, backend="sagemaker")
    assert boto3.client("s3").list_objects_v2(Bucket="ml-bucket").get("KeyCount", 0) == 0


def test_metric_definitions_match_what_the_entrypoint_prints(make_job, capsys):
    from entrypoints import platform, train
    from launcher.spec import TrainConfig

    root = make_job(hp={"epochs": "1", "logging_steps": "1"})
    plat = platform.detect(["--root", str(root)])
    metrics = train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), install_signals=False)
    out = capsys.readouterr().out
    found = {m["Name"]: [float(v) for v in re.findall(m["Regex"], out)] for m in sm.METRIC_DEFINITIONS}
    assert found["train:loss"] == pytest.approx([round(p["loss"], 4) for p in metrics["loss_curve"]], abs=1e-4)
    assert found["train:learning_rate"] == pytest.approx([p["lr"] for p in metrics["loss_curve"]], rel=1e-2)
    assert found["eval:loss_tuned"] == pytest.approx([metrics["eval"]["loss_tuned"]], abs=1e-4)
    assert found["eval:loss_base"] == pytest.approx([metrics["eval"]["loss_base"]], abs=1e-4)
    assert len(found["train:tokens_per_s"]) == len(metrics["loss_curve"])


def test_under_random_faults_n_launches_make_exactly_n_jobs(aws):
    """Throttling, 500s and dropped connections on a random 30% of calls, some after the server acted
    on a create: every launch ends in a clear state and no job is ever created twice."""
    from botocore.exceptions import ConnectionClosedError

    from launcher import clouds

    rng = random.Random(7)
    client = clouds.aws_client("sagemaker")

    def before(**kwargs):
        if rng.random() < 0.15:
            return error_response("ThrottlingException", "Rate exceeded", 400)(**kwargs)
        if rng.random() < 0.1:
            return error_response("InternalFailure", "We encountered an internal error", 500)(**kwargs)
        return None

    def after(**kwargs):
        if rng.random() < 0.1:
            raise ConnectionClosedError(endpoint_url="moto")  # the server acted; the answer is lost

    created: list[str] = []  # creates the server carried out (moto overwrites a name silently; SageMaker refuses it)

    def record(http_response, parsed, model, **kwargs):
        if http_response.status_code == 200:
            created.append(kwargs["context"].get("name", "?"))

    def remember(params, context, **kwargs):
        context["name"] = params["TrainingJobName"]

    client.meta.events.register_first("before-send.sagemaker", before)
    client.meta.events.register_first("after-call.sagemaker", after)
    client.meta.events.register_first("after-call.sagemaker.CreateTrainingJob", record)  # runs before the drop
    client.meta.events.register("before-parameter-build.sagemaker.CreateTrainingJob", remember)
    outcomes = []
    for n in range(6):
        for _ in range(2):  # each launched twice: the second must re-attach
            try:
                outcomes.append(api.launch(aws, backend="sagemaker", run_name=f"run{n}").job_id)
            except BackendError as exc:  # retries ran out: a clear error, and nothing half-made
                assert "To fix" in str(exc)
    names = [j["TrainingJobName"] for j in boto3.client("sagemaker").list_training_jobs(MaxResults=100)["TrainingJobSummaries"]]
    assert len(names) == len(set(names)) == len(set(outcomes))
    assert all(name.endswith("-a1") for name in names)
    assert sorted(created) == sorted(names)  # each job created exactly once, lost answers included


def test_a_stopped_job_resumes_as_the_next_attempt_on_the_same_checkpoints(aws, monkeypatch):
    first = api.launch(aws, backend="sagemaker")
    monkeypatch.setattr(sm, "job_state", lambda job: (JobState.CANCELLED, "stopped by user") if job["TrainingJobName"].endswith("-a1")
                        else (JobState.RUNNING, ""))
    sent = calls("CreateTrainingJob")
    resumed = api.launch(aws, backend="sagemaker")
    assert not resumed.reattached and resumed.ref.native_id == f"{first.job_id}-a2" and resumed.ref.attempt == 2
    assert sent[0]["CheckpointConfig"]["S3Uri"] == f"s3://ml-bucket/launcher/jobs/{first.job_id}/checkpoints/"
    assert api.attach(first.job_id).ref.native_id == f"{first.job_id}-a2"


def test_the_job_reads_the_hub_token_from_the_secret_its_environment_names(aws, monkeypatch):
    from entrypoints import models
    from launcher.spec import TrainConfig

    arn = boto3.client("secretsmanager").describe_secret(SecretId="hf-token")["ARN"]
    monkeypatch.setenv("HF_TOKEN", "")  # unset for the job (and restored after the test)
    monkeypatch.setenv("LAUNCHER_HF_TOKEN_SECRET", arn)
    assert models.hub_token(TrainConfig()) == SECRET
    monkeypatch.setenv("LAUNCHER_HF_TOKEN_SECRET", "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing")
    monkeypatch.setenv("HF_TOKEN", "")
    from launcher.errors import NotFoundError

    with pytest.raises((NotFoundError, BackendError), match="To fix"):
        models.hub_token(TrainConfig())


def test_a_multi_instance_multi_gpu_job_asks_for_every_instance_and_runs_torchrun_on_each(aws):
    spec = json.loads(aws.read_text())
    spec["compute"] = {"accelerator": "H100:8", "nodes": 2, "max_runtime": "2h"}
    spec["training"]["gradient_accumulation_steps"] = 4  # 4 rows a micro-batch x 4 = 16 rows a step, over 16 GPUs
    aws.write_text(json.dumps(spec))
    request, backend, _ = api.request(aws, backend="sagemaker")
    described = backend.describe(request)
    body = described["CreateTrainingJob"]
    assert body["ResourceConfig"]["InstanceType"] == "ml.p5.48xlarge" and body["ResourceConfig"]["InstanceCount"] == 2
    assert body["Environment"]["LAUNCHER_NPROC_PER_NODE"] == "8"
    assert described["torchrun (per instance)"]["command"] == (
        "python -m torch.distributed.run --nnodes=2 --node-rank=0 --nproc-per-node=8 --master-addr=algo-1 --master-port=29500 "
        "--module entrypoints.train ...")
    # 16 GPUs cannot split a step of 4 x 2 rows: refused before anything is staged.
    spec["training"]["gradient_accumulation_steps"] = 2
    aws.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match="8 rows cannot be split evenly over 16 processes. To fix: gradient_accumulation_steps: 4"):
        api.request(aws, backend="sagemaker")
