"""The SageMaker fake itself (tests/fakes/sagemaker.py): real boto3 against the moto server, a tiny
script-mode program run by the real sagemaker-training toolkit."""

from __future__ import annotations

import io
import json
import tarfile
import time

import boto3
import pytest
from botocore.exceptions import ClientError, FlexibleChecksumError

BUCKET = "jobs"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
# What a script-mode job's program sees: the toolkit's SM_* variables and arguments, the /opt/ml root.
PROGRAM = r'''
import json, os, pathlib, signal, sys, time

root = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
hps = json.loads(os.environ["SM_HPS"])
model = pathlib.Path(os.environ["SM_MODEL_DIR"])
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "rows.txt").read_text().split()
step_file = root / "checkpoints" / "step.txt"
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

start = int(step_file.read_text()) if step_file.exists() else 0
print(f"starting at step {start} with {len(rows)} rows", flush=True)
if hps.get("fail"):
    if hps["fail"] == "with-reason":
        (root / "output" / "failure").write_text("bad input: the rows are not numbers")
    print("failing now", file=sys.stderr, flush=True)
    sys.exit(3)
for step in range(start, hps["steps"]):
    if stop:
        print(f"SIGTERM: checkpointed, exiting at step {step}", flush=True)
        sys.exit(75)
    time.sleep(hps.get("step_seconds", 0))
    step_file.write_text(str(step + 1))
    print(f"step {step + 1}", flush=True)
(model / "result.json").write_text(json.dumps({
    "argv": sys.argv[1:], "resumed_from": start, "greeting": os.environ.get("GREETING"),
    "hyperparameters.json": json.loads((root / "input/config/hyperparameters.json").read_text()),
}))
print("done", flush=True)
'''


@pytest.fixture
def aws(sagemaker_fake):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train/rows.txt", Body=b"1 2 3 4")
    s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=bundle({"prog.py": PROGRAM}))
    return s3, boto3.client("sagemaker"), boto3.client("logs")


def bundle(files: dict[str, str]) -> bytes:
    """A source bundle (sourcedir.tar.gz) holding ``files``."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return archive.getvalue()


def create(sagemaker, name, hp=None, *, spot=False, instance_type="ml.g5.xlarge", train="s3://jobs/data/train", **extra):
    return sagemaker.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311",
                                "TrainingInputMode": "File"},
        HyperParameters={"sagemaker_program": "prog.py", "sagemaker_submit_directory": "s3://jobs/code/sourcedir.tar.gz",
                         "steps": "2", **(hp or {})},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": train, "S3DataDistributionType": "FullyReplicated"}}}],
        OutputDataConfig={"S3OutputPath": "s3://jobs/output"},
        ResourceConfig={"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600, **({"MaxWaitTimeInSeconds": 7200} if spot else {})},
        EnableManagedSpotTraining=spot,
        CheckpointConfig={"S3Uri": f"s3://jobs/checkpoints/{name}"},
        **extra,
    )


def wait_for(predicate, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_step(s3, name) -> int:
    """The step of the job's checkpoint in S3; 0 before there is one (or while moto, which is not atomic
    as S3 is, serves it half rewritten)."""
    try:
        return int(s3.get_object(Bucket=BUCKET, Key=f"checkpoints/{name}/step.txt")["Body"].read())
    except (s3.exceptions.NoSuchKey, FlexibleChecksumError, ValueError):
        return 0


def log_lines(logs, name) -> dict[str, list[str]]:
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/")["logStreams"]
    return {s["logStreamName"]: [e["message"] for e in logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=s["logStreamName"], startFromHead=True)["events"]]
        for s in streams}


def statuses(job) -> list[str]:
    return [t["Status"] for t in job["SecondaryStatusTransitions"]]


def test_a_job_runs_under_the_toolkit_and_delivers_its_model_logs_and_checkpoints(aws, sagemaker_fake):
    s3, sagemaker, logs = aws
    create(sagemaker, "tiny-1", {"learning_rate": "1e-2", "scheduler": '"cosine"', "k": "5"},
           Environment={"GREETING": "hello"})
    assert sagemaker.describe_training_job(TrainingJobName="tiny-1")["TrainingJobStatus"] == "InProgress"
    assert sagemaker_fake.wait("tiny-1") == "Completed"

    job = sagemaker.describe_training_job(TrainingJobName="tiny-1")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Completed", "Completed")
    assert statuses(job) == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert job["Environment"] == {"GREETING": "hello"}
    assert job["TrainingStartTime"] <= job["TrainingEndTime"]
    assert job["BillableTimeInSeconds"] == job["TrainingTimeInSeconds"] >= 1  # on-demand: every second billed
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == "s3://jobs/output/tiny-1/output/model.tar.gz"

    archive = s3.get_object(Bucket=BUCKET, Key="output/tiny-1/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["result.json"]  # the model dir's files at the archive's root
        result = json.load(tar.extractfile("result.json"))
    # The toolkit passes hyperparameters as sorted '--key value' pairs (one-letter keys '-k'), each value
    # JSON-decoded first ("1e-2" -> 0.01, '"cosine"' -> cosine) and its own sagemaker_* keys left out;
    # hyperparameters.json stays as given: strings.
    assert result["argv"] == ["-k", "5", "--learning_rate", "0.01", "--scheduler", "cosine", "--steps", "2"]
    assert result["hyperparameters.json"]["learning_rate"] == "1e-2"
    assert result["greeting"] == "hello"
    assert checkpoint_step(s3, "tiny-1") == 2

    (stream, lines), = log_lines(logs, "tiny-1").items()
    assert stream.startswith("tiny-1/algo-1-")
    assert "starting at step 0 with 4 rows" in lines and "step 2" in lines and "done" in lines
    assert any("Invoking script with the following command" in line for line in lines)  # the toolkit's own lines


def test_a_name_in_use_is_refused_and_the_first_job_kept(aws, sagemaker_fake):
    _, sagemaker, _ = aws
    create(sagemaker, "twice")
    with pytest.raises(ClientError) as refused:
        create(sagemaker, "twice", {"steps": "9"})
    assert refused.value.response["Error"]["Code"] == "ResourceInUse"
    assert refused.value.response["Error"]["Message"] == (
        "Training job names must be unique within an AWS account and region, and a training job with this name "
        "already exists (arn:aws:sagemaker:us-east-1:123456789012:training-job/twice)")
    assert sagemaker_fake.wait("twice") == "Completed"
    assert sagemaker.describe_training_job(TrainingJobName="twice")["HyperParameters"]["steps"] == "2"


@pytest.mark.parametrize(("fail", "reason"), [
    ("with-reason", "AlgorithmError: bad input: the rows are not numbers, exit code: 1"),
    ("plain", "ExitCode 3"),  # no failure file of its own: the toolkit's, naming the program's exit code
])
def test_a_failing_program_fails_the_job_with_its_reason(aws, sagemaker_fake, fail, reason):
    s3, sagemaker, _ = aws
    create(sagemaker, f"fails-{fail}", {"fail": fail})
    assert sagemaker_fake.wait(f"fails-{fail}") == "Failed"
    job = sagemaker.describe_training_job(TrainingJobName=f"fails-{fail}")
    assert reason in job["FailureReason"] and job["FailureReason"].startswith("AlgorithmError: ")
    assert statuses(job)[-2:] == ["Training", "Failed"]
    assert "ModelArtifacts" not in job
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"output/fails-{fail}/")


def test_a_bundles_requirements_must_be_installed_already(aws, sagemaker_fake):
    """The toolkit pip-installs a bundle's requirements.txt; the fake's "image" is this interpreter, and pip
    may not change it: what is installed passes, anything else fails the job (no download)."""
    s3, sagemaker, _ = aws
    for name, requirement in [("installed", f"boto3=={boto3.__version__}"), ("absent", "no-such-package-xyz==1.0")]:
        s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz",
                      Body=bundle({"prog.py": PROGRAM, "requirements.txt": requirement + "\n"}))
        create(sagemaker, name)
        sagemaker_fake.wait(name)
    assert sagemaker.describe_training_job(TrainingJobName="installed")["TrainingJobStatus"] == "Completed"
    absent = sagemaker.describe_training_job(TrainingJobName="absent")
    assert absent["TrainingJobStatus"] == "Failed"
    assert absent["FailureReason"].startswith("AlgorithmError: InstallRequirementsError:")


def test_a_channel_without_objects_fails_in_downloading(aws, sagemaker_fake):
    _, sagemaker, _ = aws
    create(sagemaker, "no-data", train="s3://jobs/data/missing")
    assert sagemaker_fake.wait("no-data") == "Failed"
    job = sagemaker.describe_training_job(TrainingJobName="no-data")
    assert job["FailureReason"].startswith('ClientError: No S3 objects found under S3 URL "s3://jobs/data/missing"')
    assert statuses(job) == ["Starting", "Downloading", "Failed"]


def test_stop_sends_sigterm_syncs_checkpoints_and_ends_stopped(aws, sagemaker_fake):
    s3, sagemaker, logs = aws
    create(sagemaker, "long", {"steps": "200", "step_seconds": "0.05"})
    wait_for(lambda: checkpoint_step(s3, "long") >= 2, what="a synced checkpoint")
    sagemaker.stop_training_job(TrainingJobName="long")
    job = sagemaker.describe_training_job(TrainingJobName="long")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopping", "Stopping")

    assert sagemaker_fake.wait("long") == "Stopped"
    job = sagemaker.describe_training_job(TrainingJobName="long")
    assert statuses(job)[-2:] == ["Stopping", "Stopped"] and "Uploading" not in statuses(job)
    (lines,) = log_lines(logs, "long").values()
    exit_line = next(line for line in lines if line.startswith("SIGTERM"))
    assert exit_line == f"SIGTERM: checkpointed, exiting at step {checkpoint_step(s3, 'long')}"  # the last step is synced
    assert checkpoint_step(s3, "long") < 200
    with pytest.raises(ClientError) as again:
        sagemaker.stop_training_job(TrainingJobName="long")
    assert again.value.response["Error"]["Message"] == "The request was rejected because the training job is in status Stopped."


def test_a_spot_interruption_restarts_from_the_synced_checkpoints(aws, sagemaker_fake):
    s3, sagemaker, logs = aws
    create(sagemaker, "spot", {"steps": "30", "step_seconds": "0.05"}, spot=True)
    wait_for(lambda: checkpoint_step(s3, "spot") >= 3, what="a synced checkpoint")
    sagemaker_fake.interrupt("spot")
    job = sagemaker.describe_training_job(TrainingJobName="spot")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("InProgress", "Interrupted")

    assert sagemaker_fake.wait("spot") == "Completed"
    job = sagemaker.describe_training_job(TrainingJobName="spot")
    assert statuses(job) == ["Starting", "Downloading", "Training", "Interrupted", "Restarting", "Training",
                             "Uploading", "Completed"]
    assert job["BillableTimeInSeconds"] < job["TrainingTimeInSeconds"]  # managed spot's saving
    first, second = sagemaker_fake.roots("spot")
    assert first != second
    streams = log_lines(logs, "spot")
    assert len(streams) == 2  # a stream per attempt
    resumed_at = int((first / "checkpoints" / "step.txt").read_text())
    assert f"starting at step {resumed_at} with 4 rows" in streams[max(streams)]  # the restart's stream
    archive = s3.get_object(Bucket=BUCKET, Key="output/spot/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert json.load(tar.extractfile("result.json"))["resumed_from"] == resumed_at > 0


def test_a_reclaim_without_sigterm_resumes_from_what_was_synced_before(aws, sagemaker_fake):
    """SageMaker's DLCs do not forward SIGTERM to the program: with the fake set that way, the restart
    starts from the last periodic sync, and the program never printed its SIGTERM line."""
    s3, sagemaker, logs = aws
    sagemaker_fake.sigterm_reaches_program = False
    create(sagemaker, "spot-kill", {"steps": "30", "step_seconds": "0.05"}, spot=True)
    wait_for(lambda: checkpoint_step(s3, "spot-kill") >= 3, what="a synced checkpoint")
    sagemaker_fake.interrupt("spot-kill")
    assert sagemaker_fake.wait("spot-kill") == "Completed"
    streams = log_lines(logs, "spot-kill")
    assert not any(line.startswith("SIGTERM") for lines in streams.values() for line in lines)
    first, _ = sagemaker_fake.roots("spot-kill")
    synced = int((first / "checkpoints" / "step.txt").read_text())
    assert f"starting at step {synced} with 4 rows" in streams[max(streams)] and synced >= 3


def test_a_quota_refusal_has_sagemakers_shape(aws, sagemaker_fake):
    _, sagemaker, _ = aws
    sagemaker_fake.refuse_quota("ml.g5.xlarge", spot=True)
    with pytest.raises(ClientError) as refused:
        create(sagemaker, "no-quota", spot=True)
    assert refused.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    assert refused.value.response["Error"]["Message"] == (
        "The account-level service limit 'ml.g5.xlarge for spot training job usage' is 0 Instances, with current "
        "utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to request an "
        "increase for this quota. If AWS Service Quotas is not available, contact AWS support to request an increase "
        "for this quota.")
    with pytest.raises(ClientError):
        sagemaker.describe_training_job(TrainingJobName="no-quota")  # nothing was created
    create(sagemaker, "on-demand")  # the on-demand quota of the same type is another quota
    assert sagemaker_fake.wait("on-demand") == "Completed"


def test_a_quota_counts_the_jobs_in_progress(aws, sagemaker_fake):
    _, sagemaker, _ = aws
    sagemaker_fake.refuse_quota("ml.g5.xlarge", limit=1)
    create(sagemaker, "first", {"steps": "100", "step_seconds": "0.05"})
    with pytest.raises(ClientError) as refused:
        create(sagemaker, "second")
    assert "is 1 Instances, with current utilization of 1 Instances" in refused.value.response["Error"]["Message"]
    sagemaker.stop_training_job(TrainingJobName="first")
    assert sagemaker_fake.wait("first") == "Stopped"
    create(sagemaker, "second")
    assert sagemaker_fake.wait("second") == "Completed"
