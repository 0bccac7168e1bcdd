"""The Vertex AI fake itself (tests/fakes/vertex.py), through the real clients launcher builds
(``clouds.vertex_client``, ``clouds.logging_client``, ``clouds.gcs_client``): a pip-installed package
and plain commands run as CustomJobs, with their files in the GCS emulator and their output in Cloud
Logging; failures, label filters, cancel, worker restarts, quotas and injected faults."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1
from google.logging.type import log_severity_pb2

from launcher import clouds

REGION = "us-central1"
PARENT = f"projects/test-project/locations/{REGION}"
BUCKET = "vfake-staging"
TRAINER = Path(__file__).parent / "fakes" / "vertex_trainer"
JobState = aiplatform_v1.JobState


@pytest.fixture
def bucket(vertex_fake):
    return clouds.gcs_client().create_bucket(BUCKET)


@pytest.fixture
def package(bucket) -> str:
    """tests/fakes/vertex_trainer as launcher ships its bundle: a tar.gz with pyproject.toml at its root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(TRAINER.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    bucket.blob("packages/trainer-0.1.tar.gz").upload_from_string(buffer.getvalue())
    return f"gs://{BUCKET}/packages/trainer-0.1.tar.gz"


def python_job(package: str, run: str, *, args=(), env=None, labels=None, **spec) -> aiplatform_v1.CustomJob:
    pool = {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
            "python_package_spec": {"executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/pytorch-xla.2-4.py310:latest",
                                    "package_uris": [package], "python_module": "vfake_trainer", "args": list(args),
                                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}}
    return aiplatform_v1.CustomJob(display_name=run, labels=labels or {"launcher-run": run}, job_spec={
        "worker_pool_specs": [pool], "base_output_directory": {"output_uri_prefix": f"gs://{BUCKET}/runs/{run}"}, **spec})


def command_job(code: str, run: str = "cmd", *, labels=None, machine=None, args=(), env=None, **spec) -> aiplatform_v1.CustomJob:
    pool = {"machine_spec": machine or {"machine_type": "n1-standard-4"}, "replica_count": 1,
            "container_spec": {"image_uri": "us-docker.pkg.dev/p/r/train:1", "command": [sys.executable, "-c", code],
                               "args": list(args), "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}}
    return aiplatform_v1.CustomJob(display_name=run, labels=labels or {}, job_spec={
        "worker_pool_specs": [pool], "base_output_directory": {"output_uri_prefix": f"gs://{BUCKET}/runs/{run}"}, **spec})


def job_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def log_entries(name: str, *extra: str, **kwargs) -> list:
    query = " AND ".join(['resource.type="ml_job"', f'resource.labels.job_id="{job_id(name)}"', *extra])
    request = {"resource_names": ["projects/test-project"], "filter": query, **kwargs}
    return list(clouds.logging_client().list_log_entries(request=request))


def wait_for_line(name: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in e.text_payload for e in log_entries(name)):
        assert time.monotonic() < deadline, f"no log line {text!r} from {name}"
        time.sleep(0.1)


@pytest.mark.slow
def test_python_package_job_succeeds_with_its_model_in_gcs_and_its_output_in_cloud_logging(vertex_fake, bucket, package):
    bucket.blob("data/train.jsonl").upload_from_string('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    client = clouds.vertex_client("job", REGION)
    created = client.create_custom_job(parent=PARENT, custom_job=python_job(
        package, "r1", args=["--steps=2"], env={"LAUNCHER_CHANNEL_TRAIN": f"gs://{BUCKET}/data/train.jsonl"}))
    assert created.state == JobState.JOB_STATE_PENDING and created.name.startswith(f"{PARENT}/customJobs/")
    assert job_id(created.name).isdigit() and created.create_time and not created.end_time
    assert vertex_fake.wait(created.name) == "JOB_STATE_SUCCEEDED"

    job = client.get_custom_job(name=created.name)
    assert job.state == JobState.JOB_STATE_SUCCEEDED and not job.error.code
    assert job.create_time <= job.start_time <= job.end_time and job.update_time == job.end_time
    stored = {b.name: b for b in bucket.list_blobs(prefix="runs/r1/")}
    assert {"runs/r1/model/weights.bin", "runs/r1/model/config.json", "runs/r1/checkpoints/state.json"} <= set(stored)
    assert json.loads(stored["runs/r1/model/config.json"].download_as_text()) == {"steps": 2, "resumed_from": 0}

    entries = log_entries(created.name)
    texts = [e.text_payload for e in entries]
    stdout = [e.text_payload for e in entries if e.severity == log_severity_pb2.INFO]  # stderr's lines may land between
    assert stdout[0] == "start at step 0" and "train rows 3" in stdout and stdout[-1] == "done"
    env = json.loads(next(t for t in texts if t.startswith("env "))[4:])
    assert env["CLOUD_ML_JOB_ID"] == job_id(created.name) and env["CLOUD_ML_REGION"] == REGION
    assert env["AIP_TENSORBOARD_LOG_DIR"] == f"gs://{BUCKET}/runs/r1/logs/"
    cluster = json.loads(env["CLUSTER_SPEC"])
    assert cluster["task"] == {"type": "workerpool0", "index": 0} and len(cluster["cluster"]["workerpool0"]) == 1
    warning = next(e for e in entries if e.text_payload == "a warning, on stderr")
    assert warning.severity == log_severity_pb2.ERROR and entries[0].severity == log_severity_pb2.INFO
    first = entries[0]
    assert first.log_name == "projects/test-project/logs/workerpool0-0" and first.resource.type == "ml_job"
    assert dict(first.resource.labels) == {"job_id": job_id(created.name), "project_id": "test-project", "task_name": "workerpool0-0"}
    assert [e.insert_id for e in entries] == sorted({e.insert_id for e in entries})
    assert [e.timestamp for e in entries] == sorted({e.timestamp for e in entries})

    cursor = entries[1].timestamp.rfc3339()  # what a follower keeps between polls
    assert [e.text_payload for e in log_entries(created.name, f'timestamp>"{cursor}"')] == texts[2:]
    assert [e.text_payload for e in log_entries(created.name, f'timestamp>="{cursor}"')] == texts[1:]
    assert [e.text_payload for e in log_entries(created.name, page_size=2)] == texts  # the pager follows page tokens
    assert [e.text_payload for e in log_entries(created.name, order_by="timestamp desc")] == texts[::-1]
    assert log_entries("projects/p/locations/l/customJobs/1") == []
    with pytest.raises(exceptions.InvalidArgument, match="does not understand the filter term 'jsonPayload.x=1'"):
        log_entries(created.name, "jsonPayload.x=1")


def test_a_failing_job_is_failed_with_vertex_reason(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    code = "import sys; print('loading'); sys.stderr.write('Traceback (most recent call last):\\nValueError: bad row 7\\n'); sys.exit(3)"
    name = client.create_custom_job(parent=PARENT, custom_job=command_job(code)).name
    assert vertex_fake.wait(name) == "JOB_STATE_FAILED"
    job = client.get_custom_job(name=name)
    assert job.error.code == 3 and job.end_time
    assert job.error.message.startswith("The replica workerpool0-0 exited with a non-zero status of 3. Termination reason: Error. ")
    assert job.error.message.endswith("ValueError: bad row 7")

    vertex_fake.fail_next("Resources are insufficient in region: us-central1.", code=8)
    stockout = client.create_custom_job(parent=PARENT, custom_job=command_job("print('never')")).name
    assert vertex_fake.wait(stockout) == "JOB_STATE_FAILED"
    assert client.get_custom_job(name=stockout).error.code == 8 and log_entries(stockout) == []


def test_list_custom_jobs_filters_by_labels_and_state_and_pages(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    names = [client.create_custom_job(parent=PARENT, custom_job=command_job("pass", run, labels={"launcher-run": run, "team": team})).name
             for run, team in (("a", "x"), ("b", "x"), ("c", "y"))]
    for name in names:
        vertex_fake.wait(name)
    listed = lambda text="", parent=PARENT, **kw: [j.name for j in client.list_custom_jobs(  # noqa: E731
        request={"parent": parent, "filter": text, **kw})]
    assert listed('labels.launcher-run="b"') == [names[1]]
    assert listed('labels.team=x AND labels.launcher-run="a"') == [names[0]]
    assert listed("labels.team=x AND state=JOB_STATE_SUCCEEDED") == [names[1], names[0]]  # newest first
    assert listed("state=JOB_STATE_RUNNING") == [] and listed("labels.missing:*") == []
    assert sorted(listed(page_size=1)) == sorted(names)  # one job a page, the pager follows
    assert listed(parent="projects/test-project/locations/europe-west4") == []
    with pytest.raises(exceptions.InvalidArgument, match="does not understand the filter term 'create_time>1'"):
        listed("create_time>1")

    operation = client.delete_custom_job(name=names[2])
    operation.result(timeout=10)
    assert operation.operation.name.startswith(f"{PARENT.rsplit('/', 2)[0]}/locations/{REGION}/operations/")
    assert client.get_operation({"name": operation.operation.name}).done
    with pytest.raises(exceptions.NotFound):
        client.get_custom_job(name=names[2])
    assert len(listed()) == 2


@pytest.mark.slow
def test_cancel_stops_the_process_group_and_the_job_is_cancelled(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    polite = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM'), sys.exit(0)))\n"
              "print('ready', flush=True)\nwhile True: time.sleep(0.05)")
    name = client.create_custom_job(parent=PARENT, custom_job=command_job(polite)).name
    wait_for_line(name, "ready")
    assert client.get_custom_job(name=name).state == JobState.JOB_STATE_RUNNING
    client.cancel_custom_job(name=name)
    assert client.get_custom_job(name=name).state in (JobState.JOB_STATE_CANCELLING, JobState.JOB_STATE_CANCELLED)
    assert vertex_fake.wait(name) == "JOB_STATE_CANCELLED"
    job = client.get_custom_job(name=name)
    assert job.error.code == 1 and job.end_time
    assert "got SIGTERM" in [e.text_payload for e in log_entries(name)]
    with pytest.raises(ProcessLookupError):
        os.killpg(vertex_fake.pids(name)[0], 0)
    with pytest.raises(exceptions.FailedPrecondition):
        client.cancel_custom_job(name=name)

    vertex_fake.grace_s = 0.5  # a program that ignores SIGTERM is killed after the grace period
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    name = client.create_custom_job(parent=PARENT, custom_job=command_job(stubborn)).name
    wait_for_line(name, "ready")
    client.cancel_custom_job(name=name)
    assert vertex_fake.wait(name, timeout=10) == "JOB_STATE_CANCELLED"
    with pytest.raises(ProcessLookupError):
        os.killpg(vertex_fake.pids(name)[0], 0)

    timed = command_job("import time; time.sleep(60)", scheduling={"timeout": {"seconds": 1}})
    name = client.create_custom_job(parent=PARENT, custom_job=timed).name
    assert vertex_fake.wait(name, timeout=10) == "JOB_STATE_FAILED"
    assert client.get_custom_job(name=name).error.code == 4


@pytest.mark.slow
def test_a_restarted_worker_resumes_from_its_synced_checkpoint(vertex_fake, bucket, package):
    client = clouds.vertex_client("job", REGION)
    name = client.create_custom_job(parent=PARENT, custom_job=python_job(
        package, "resume", args=["--steps=8", "--sleep=0.25"], scheduling={"strategy": "SPOT"})).name
    wait_for_line(name, "checkpointed step 2")
    deadline = time.monotonic() + 5
    while not bucket.blob("runs/resume/checkpoints/state.json").exists():  # written through while it runs
        assert time.monotonic() < deadline and client.get_custom_job(name=name).state == JobState.JOB_STATE_RUNNING
        time.sleep(0.05)
    vertex_fake.restart_worker(name)
    assert client.get_custom_job(name=name).state == JobState.JOB_STATE_RUNNING
    assert vertex_fake.wait(name) == "JOB_STATE_SUCCEEDED"
    assert vertex_fake.restarts(name) == 1 and len(vertex_fake.pids(name)) == 2
    starts = [e.text_payload for e in log_entries(name) if e.text_payload.startswith("start at step")]
    assert starts[0] == "start at step 0" and len(starts) == 2 and int(starts[1].split()[-1]) >= 2
    config = json.loads(bucket.blob("runs/resume/model/config.json").download_as_text())
    assert config["resumed_from"] == int(starts[1].split()[-1])
    assert json.loads(bucket.blob("runs/resume/checkpoints/state.json").download_as_text()) == {"step": 8}


def test_quota_refusals_use_vertex_words(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    l4 = {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
    vertex_fake.refuse_quota("NVIDIA_L4", limit=1)
    running = client.create_custom_job(parent=PARENT, custom_job=command_job("import time; time.sleep(30)", machine=l4)).name
    with pytest.raises(exceptions.ResourceExhausted) as refused:
        client.create_custom_job(parent=PARENT, custom_job=command_job("pass", machine=l4))
    assert refused.value.grpc_status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.message == ("The following quota metrics exceed quota limits: "
                                     "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus")
    client.cancel_custom_job(name=running)
    vertex_fake.wait(running)
    client.create_custom_job(parent=PARENT, custom_job=command_job("pass", machine=l4))  # the quota is free again

    vertex_fake.refuse_quota("NVIDIA_TESLA_A100", spot=True)
    a100 = {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1}
    with pytest.raises(exceptions.ResourceExhausted, match="custom_model_training_preemptible_nvidia_a100_gpus"):
        client.create_custom_job(parent=PARENT, custom_job=command_job("pass", machine=a100, scheduling={"strategy": "SPOT"}))
    vertex_fake.refuse_quota("n1-standard-4", limit=2, at_create=False)  # 4 vCPUs > 2: created, then FAILED
    late = client.create_custom_job(parent=PARENT, custom_job=command_job("pass")).name
    assert vertex_fake.wait(late) == "JOB_STATE_FAILED"
    error = client.get_custom_job(name=late).error
    assert (error.code, error.message) == (8, "The following quota metrics exceed quota limits: "
                                              "aiplatform.googleapis.com/custom_model_training_cpus")


def test_injected_faults_lose_some_create_responses_and_a_lookup_first_launch_makes_one_job_each(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    vertex_fake.faults(rate=0.5, seed=7, methods={"CreateCustomJob", "ListCustomJobs"})
    retriable = (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded)
    runs = [f"run{i}" for i in range(6)]
    for run in runs:  # a launch that looks for its label before each create
        for _ in range(50):
            try:
                if list(client.list_custom_jobs(request={"parent": PARENT, "filter": f'labels.launcher-run="{run}"'})):
                    break
                client.create_custom_job(parent=PARENT, custom_job=command_job("pass", run, labels={"launcher-run": run}))
                break
            except retriable:
                continue
    creates = [after for method, _, after in vertex_fake.injected if method == "CreateCustomJob"]
    assert True in creates and False in creates  # creates failed before and after taking effect ...
    assert len(vertex_fake.requests) == len(runs)  # ... yet only one create per launch reached the service
    jobs = list(client.list_custom_jobs(parent=PARENT))
    assert sorted(j.labels["launcher-run"] for j in jobs) == runs

    vertex_fake.faults(rate=1.0, seed=1, methods={"CreateCustomJob"})  # every answer lost: a blind retry duplicates
    before = len(vertex_fake.injected)
    for _ in range(4):
        with pytest.raises(retriable):
            client.create_custom_job(parent=PARENT, custom_job=command_job("pass", "blind", labels={"launcher-run": "blind"}))
    vertex_fake.faults(rate=0)
    took_effect = sum(after for _, _, after in vertex_fake.injected[before:])
    blind = list(client.list_custom_jobs(request={"parent": PARENT, "filter": 'labels.launcher-run="blind"'}))
    assert took_effect >= 2 and len(blind) == took_effect


def test_container_spec_runs_its_command_with_args_env_and_the_gcs_mount(vertex_fake, bucket):
    client = clouds.vertex_client("job", REGION)
    code = ("import os, sys, pathlib\nmodel = pathlib.Path(os.environ['LAUNCHER_GCS_MOUNT']) / os.environ['AIP_MODEL_DIR'][5:]\n"
            "model.mkdir(parents=True)\n(model / 'out.txt').write_text(os.environ['GREETING'] + ' ' + ' '.join(sys.argv[1:]))")
    name = client.create_custom_job(parent=PARENT, custom_job=command_job(code, "box", args=["--a=1", "b"],
                                                                          env={"GREETING": "hello"})).name
    assert vertex_fake.wait(name) == "JOB_STATE_SUCCEEDED"
    assert bucket.blob("runs/box/model/out.txt").download_as_text() == "hello --a=1 b"
    assert vertex_fake.requests[-1].custom_job.job_spec.worker_pool_specs[0].container_spec.image_uri == "us-docker.pkg.dev/p/r/train:1"

    no_command = command_job("pass")
    no_command.job_spec.worker_pool_specs[0].container_spec.command.clear()
    with pytest.raises(exceptions.InvalidArgument, match="cannot run an image's default entrypoint"):
        client.create_custom_job(parent=PARENT, custom_job=no_command)
    two_pools = command_job("pass")
    two_pools.job_spec.worker_pool_specs.append(two_pools.job_spec.worker_pool_specs[0])
    with pytest.raises(exceptions.InvalidArgument, match="one worker pool of one replica"):
        client.create_custom_job(parent=PARENT, custom_job=two_pools)
    with pytest.raises(exceptions.MethodNotImplemented, match="tests/fakes/vertex.py"):
        client.list_hyperparameter_tuning_jobs(parent=PARENT)
    with pytest.raises(exceptions.NotFound):
        client.get_custom_job(name=f"{PARENT}/customJobs/42")


@pytest.mark.slow
def test_the_by_hand_server_prints_its_environment_and_runs_a_job(hand_started, monkeypatch):
    """tests/fakes/gcp_server.py in its own process, reached through the environment it prints."""
    from conftest import free_port

    server = hand_started("gcp_server.py", "--storage-port", str(free_port()), "--vertex-port", str(free_port()))
    env = server.printed
    assert {"STORAGE_EMULATOR_HOST", "VERTEX_EMULATOR_HOST", "LOGGING_EMULATOR_HOST", "LAUNCHER_VERTEX_PROJECT",
            "LAUNCHER_VERTEX_REGION", "LAUNCHER_VERTEX_BUCKET"} <= set(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clouds.reset()
    try:
        client = clouds.vertex_client("job", env["LAUNCHER_VERTEX_REGION"])
        code = ("import os, pathlib\nmodel = pathlib.Path(os.environ['LAUNCHER_GCS_MOUNT']) / os.environ['AIP_MODEL_DIR'][5:]\n"
                "model.mkdir(parents=True)\n(model / 'ok').write_text('ok')\nprint('trained')")
        job = command_job(code, "byhand")
        job.job_spec.base_output_directory.output_uri_prefix = f"gs://{env['LAUNCHER_VERTEX_BUCKET']}/runs/byhand"
        parent = f"projects/{env['LAUNCHER_VERTEX_PROJECT']}/locations/{env['LAUNCHER_VERTEX_REGION']}"
        name = client.create_custom_job(parent=parent, custom_job=job).name
        deadline = time.monotonic() + 30
        while client.get_custom_job(name=name).state != JobState.JOB_STATE_SUCCEEDED:
            assert time.monotonic() < deadline, client.get_custom_job(name=name)
            time.sleep(0.2)
        blob = clouds.gcs_client().bucket(env["LAUNCHER_VERTEX_BUCKET"]).blob("runs/byhand/model/ok")
        assert blob.download_as_text() == "ok"
        assert [e.text_payload for e in log_entries(name)] == ["trained"]
    finally:
        clouds.reset()
    server.process.terminate()
    assert server.process.wait(15) == 0  # a clean stop on SIGTERM
