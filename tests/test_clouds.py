"""launcher.clouds, the one factory for cloud clients: the real SDKs pointed at local servers (moto,
gcp-storage-emulator, a plaintext gRPC server for Vertex AI, Pub/Sub and Cloud Logging), cached per
thread, a missing SDK naming its extra, and SDK exceptions turned into launcher errors at the border."""

from __future__ import annotations

import sys
import threading

import pytest

from launcher import clouds
from launcher.errors import BackendError, MissingExtraError, NotFoundError, SpecError


@pytest.fixture
def no_aws_config(tmp_path, monkeypatch):
    """No region or profile from the environment or ~/.aws."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-config"))
    clouds.reset()


# --- AWS --------------------------------------------------------------------------------------------
def test_aws_client_talks_to_the_endpoint_with_standard_retries(moto_server, monkeypatch):
    s3 = clouds.aws_client("s3")
    assert s3.meta.endpoint_url == moto_server
    s3.create_bucket(Bucket="bucket")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bucket"]
    assert s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert clouds.aws_client("s3").meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}
    assert clouds.aws_client("s3", endpoint_url="http://127.0.0.1:9").meta.endpoint_url == "http://127.0.0.1:9"


def test_aws_clients_are_cached_per_thread_service_and_region(moto_server):
    s3 = clouds.aws_client("s3")
    assert clouds.aws_client("s3") is s3
    assert clouds.aws_client("sagemaker") is not s3
    assert clouds.aws_client("sagemaker", "eu-west-1").meta.region_name == "eu-west-1"
    assert clouds.aws_client("sagemaker").meta.region_name == "us-east-1"  # AWS_DEFAULT_REGION
    other: list = []
    thread = threading.Thread(target=lambda: other.extend([clouds.aws_client("s3"), clouds.aws_session()]))
    thread.start()
    thread.join()
    assert other[0] is not s3 and other[1] is not clouds.aws_session()
    clouds.reset()
    assert clouds.aws_client("s3") is not s3


def test_a_regional_service_without_a_region_says_how_to_set_one(no_aws_config):
    with pytest.raises(SpecError, match=r"^no AWS region is set for sagemaker. To fix: export AWS_REGION="):
        clouds.aws_client("sagemaker")
    assert clouds.aws_client("s3").meta.service_model.service_name == "s3"  # S3 needs none


@pytest.mark.parametrize(
    "name, value, shown",
    [
        ("AWS_RETRY_MODE", "standrd", r"AWS_RETRY_MODE='standrd' is not a botocore retry mode. Did you mean 'standard'\? To fix:"),
        ("AWS_MAX_ATTEMPTS", "0", r"AWS_MAX_ATTEMPTS='0' is not a whole number of attempts. To fix: set it to 1 or more"),
        ("AWS_MAX_ATTEMPTS", "many", r"AWS_MAX_ATTEMPTS='many' is not a whole number"),
    ],
)
def test_bad_retry_settings_are_one_line(name, value, shown, moto_server, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(SpecError, match=shown):
        clouds.aws_client("s3")


@pytest.mark.parametrize(
    "module, make, extra",
    [
        ("boto3", lambda: clouds.aws_client("s3"), "aws"),
        ("google.cloud.storage", clouds.gcs_client, "gcp"),
        ("google.cloud.aiplatform_v1", lambda: clouds.vertex_client("job", "us-central1"), "gcp"),
        ("google.cloud.pubsub_v1", clouds.pubsub_publisher, "gcp"),
        ("google.cloud.logging_v2.services.logging_service_v2", clouds.logging_client, "gcp"),
    ],
)
def test_a_missing_sdk_names_the_extra(module, make, extra, monkeypatch):
    clouds.reset()
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(MissingExtraError, match=rf"needs the Python package '.+', which is not installed. To fix: pip install \"launcher\[{extra}\]\""):
        make()


def test_aws_errors_become_launcher_errors(moto_server, monkeypatch):
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import NoCredentialsError

    s3 = clouds.aws_client("s3")
    with pytest.raises(NotFoundError, match=r"^s3://nope does not exist \(NoSuchBucket: .*\). To fix: create it$"):
        with clouds.aws_errors("s3://nope", "s3:ListBucket", missing="create it"):
            s3.list_objects_v2(Bucket="nope")

    class Throttled:
        def stream(self):
            yield b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3 = clouds.aws_client("s3")
    s3.meta.events.register("before-send.s3.ListBuckets", lambda request, **kwargs: AWSResponse(request.url, 503, {}, Throttled()))
    with pytest.raises(BackendError, match=r"AWS throttled the calls on buckets \(SlowDown\).*To fix: try again"):
        with clouds.aws_errors("buckets", "s3:ListAllMyBuckets"):
            s3.list_buckets()
    with pytest.raises(BackendError, match=r"no AWS credentials were found to access s3://b. To fix: run 'aws configure'"):
        with clouds.aws_errors("s3://b", "s3:GetObject"):
            raise NoCredentialsError()
    with pytest.raises(KeyError):  # not an SDK error: passes unchanged
        with clouds.aws_errors("s3://b", "s3:GetObject"):
            raise KeyError("x")


# --- Google -----------------------------------------------------------------------------------------
def test_gcs_client_on_the_emulator_is_anonymous(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials

    client = clouds.gcs_client()
    assert isinstance(client._credentials, AnonymousCredentials) and client.project == clouds.EMULATOR_PROJECT
    client.create_bucket("b").blob("k").upload_from_string(b"v")
    assert clouds.gcs_client() is client and client.bucket("b").blob("k").download_as_bytes() == b"v"


def test_vertex_client_speaks_plaintext_grpc_to_the_emulator_without_credentials(grpc_fake, monkeypatch):
    import grpc
    from google.cloud import aiplatform_v1

    seen = []

    def get_custom_job(request, context):
        seen.append((request.name, dict(context.invocation_metadata())))
        return aiplatform_v1.CustomJob(name=request.name, display_name="fin-summary-run1")

    job_service = {"GetCustomJob": (aiplatform_v1.GetCustomJobRequest, aiplatform_v1.CustomJob, get_custom_job)}
    address = grpc_fake("google.cloud.aiplatform.v1.JobService", job_service)
    monkeypatch.setenv("VERTEX_EMULATOR_HOST", address)
    name = "projects/p/locations/us-central1/customJobs/1"
    client = clouds.vertex_client("job", "us-central1")
    assert client.get_custom_job(name=name).display_name == "fin-summary-run1"
    assert seen[0][0] == name and "authorization" not in seen[0][1]
    assert clouds.vertex_client("job", "us-central1") is client
    for kind, (service, _) in clouds.VERTEX_SERVICES.items():
        assert type(clouds.vertex_client(kind, "us-central1")).__name__ == f"{service}Client"
    injected = clouds.vertex_client("job", "us-central1", channel=grpc.insecure_channel(address))
    assert injected is not client and injected.get_custom_job(name=name).name == name
    with pytest.raises(SpecError, match="no Vertex AI region is set. To fix: set vertex.region in the job spec"):
        clouds.vertex_client("job", "")


def test_vertex_client_uses_the_regional_endpoint(tmp_path, monkeypatch):
    """Without an emulator: the region's own endpoint (credentials are only read here, never used)."""
    monkeypatch.delenv("VERTEX_EMULATOR_HOST", raising=False)
    (tmp_path / "adc.json").write_text('{"type": "authorized_user", "client_id": "i", "client_secret": "s", "refresh_token": "r"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
    clouds.reset()
    assert clouds.vertex_client("endpoint", "europe-west4").api_endpoint == "europe-west4-aiplatform.googleapis.com"


def test_pubsub_publisher_honours_the_emulator(grpc_fake, monkeypatch):
    from google.pubsub_v1 import PublishRequest, PublishResponse

    published = []

    def publish(request, context):
        published.extend((request.topic, message.data) for message in request.messages)
        response = PublishResponse()
        response.message_ids.extend(str(n) for n in range(len(request.messages)))
        return response

    address = grpc_fake("google.pubsub.v1.Publisher", {"Publish": (PublishRequest, PublishResponse, publish)})
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", address)
    publisher = clouds.pubsub_publisher()
    assert publisher.publish("projects/p/topics/alerts", b'{"alert": "drift"}').result(timeout=30) == "0"
    assert published == [("projects/p/topics/alerts", b'{"alert": "drift"}')]
    publisher.stop()


def test_logging_client_reads_entries_from_a_fake(grpc_fake, monkeypatch):
    from google.cloud.logging_v2.types import ListLogEntriesRequest, ListLogEntriesResponse, LogEntry

    def list_log_entries(request, context):
        assert request.filter == 'labels."ml.googleapis.com/job_id"="1"'
        return ListLogEntriesResponse(entries=[LogEntry(text_payload="step 5 loss 1.20")])

    methods = {"ListLogEntries": (ListLogEntriesRequest, ListLogEntriesResponse, list_log_entries)}
    monkeypatch.setenv("LOGGING_EMULATOR_HOST", grpc_fake("google.logging.v2.LoggingServiceV2", methods))
    entries = clouds.logging_client().list_log_entries(
        request={"resource_names": ["projects/p"], "filter": 'labels."ml.googleapis.com/job_id"="1"'}
    )
    assert [entry.text_payload for entry in entries] == ["step 5 loss 1.20"]


@pytest.mark.parametrize(
    "make, error, shown",
    [
        (lambda api, auth: api.NotFound("No such object: b/k"), NotFoundError, r"^gs://b/k does not exist \(404 No such object: b/k\). To fix: check it$"),
        (lambda api, auth: api.Forbidden("caller does not have storage.objects.get access"), BackendError,
         r"Google Cloud denied access to gs://b/k \(403 .*\). To fix: grant storage.objects.get to the account"),
        (lambda api, auth: auth.DefaultCredentialsError("Your default credentials were not found."), BackendError,
         r"no usable Google credentials to access gs://b/k .*To fix: run 'gcloud auth application-default login'"),
        (lambda api, auth: api.TooManyRequests("rate limit"), BackendError, r"throttled or hit a quota on gs://b/k \(429 rate limit\)"),
        (lambda api, auth: api.InternalServerError("boom"), BackendError, r"Google Cloud refused a call on gs://b/k \(500 boom\)"),
    ],
)
def test_google_errors_become_launcher_errors(make, error, shown):
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    with pytest.raises(error, match=shown):
        with clouds.google_errors("gs://b/k", "storage.objects.get", missing="check it"):
            raise make(api, auth)
