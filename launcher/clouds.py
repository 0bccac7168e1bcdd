"""The one door to every cloud SDK: every boto3 and Google client is built here, and nowhere else.

Why one module (SkyPilot's ``sky/adaptors`` pattern):

* **Lazy.** boto3 and the google libraries are imported inside the functions, so ``import
  launcher.clouds`` costs nothing and a missing SDK fails where it is needed, as
  ``MissingExtraError`` naming the extra to install (``aws`` or ``gcp``).
* **Injected endpoints.** Tests and local fakes point the *real* client libraries at local servers.
  Each client honours its library's own convention where one exists, and ours where none does:

      AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>)  boto3's own: the moto server in tests
      STORAGE_EMULATOR_HOST=http://host:port             google-cloud-storage's own: gcp-storage-emulator
      PUBSUB_EMULATOR_HOST=host:port                     google-cloud-pubsub's own: plaintext gRPC
      VERTEX_EMULATOR_HOST=host:port                     ours: plaintext gRPC to the Vertex AI fake
      LOGGING_EMULATOR_HOST=host:port                    ours: plaintext gRPC to a Cloud Logging fake

  The gRPC factories also take ``channel=`` for a test that holds its own server. An emulator is
  always talked to with anonymous credentials: no Google account is looked up.
* **Cached per thread.** Building a boto3 client costs 15-130 ms (measured here), and a status poll
  every few seconds should not pay it each time. boto3 clients are thread-safe but sessions are not,
  and the storage client's HTTP session is not either, so the cache is per thread, keyed by
  everything that changes what a client talks to (service, region, endpoint, profile, retries).
  ``reset()`` forgets this thread's clients (after credentials change).
* **Errors at the border.** ``aws_errors`` and ``google_errors`` turn an SDK exception raised inside
  their block into one launcher error naming the resource and, for a refusal, the IAM permission, with
  how to fix it. Nothing above them sees botocore or google-api-core exceptions.

AWS retries: botocore's ``standard`` mode (exponential backoff with jitter, retries on throttling and
5xx) unless ``AWS_RETRY_MODE`` says ``adaptive`` or ``legacy``; ``AWS_MAX_ATTEMPTS`` (total attempts,
default 5: SageMaker's control plane throttles at a few calls a second per account, and five attempts
ride out a burst). The region comes from the argument, ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the
profile; S3, IAM and STS work without one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from launcher.errors import BackendError, LauncherError, MissingExtraError, NotFoundError, SpecError, did_you_mean

AWS_RETRY_MODES = ("standard", "adaptive", "legacy")
AWS_DEFAULT_MAX_ATTEMPTS = 5
AWS_REGIONLESS = frozenset({"s3", "iam", "sts"})  # global services, or regional ones boto3 resolves alone
EMULATOR_PROJECT = "emulator"  # a placeholder project for google clients talking to an emulator

# kind -> (service class prefix, module under google.cloud.aiplatform_v1.services)
VERTEX_SERVICES = {
    "job": ("JobService", "job_service"),
    "model": ("ModelService", "model_service"),
    "endpoint": ("EndpointService", "endpoint_service"),
    "prediction": ("PredictionService", "prediction_service"),
}

_local = threading.local()


def reset() -> None:
    """Forget this thread's cached sessions and clients (the next call builds new ones)."""
    _local.__dict__.clear()


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    cache = _local.__dict__.setdefault("clients", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _require(module: str, package: str, extra: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(package, extra, purpose) from None


# --- AWS --------------------------------------------------------------------------------------------
def aws_session() -> Any:
    """This thread's boto3 Session (per ``AWS_PROFILE``)."""
    boto3 = _require("boto3", "boto3", "aws", "Talking to AWS")
    return _cached(("aws-session", os.environ.get("AWS_PROFILE")), boto3.session.Session)


def aws_region(region: str | None = None, service: str = "") -> str | None:
    """The region to use: ``region``, else AWS_REGION, AWS_DEFAULT_REGION or the profile's. SpecError
    when there is none, except for the services that work without one (None for them)."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or aws_session().region_name
    if not region and service not in AWS_REGIONLESS:
        raise SpecError(
            f"no AWS region is set for {service or 'AWS'}. "
            "To fix: export AWS_REGION=us-east-1 (your region), or set sagemaker.region in the job spec"
        )
    return region or None


def aws_client(service: str, region: str | None = None, *, endpoint_url: str | None = None) -> Any:
    """A boto3 client for ``service`` (``"s3"``, ``"sagemaker"``, ``"logs"``, ...), cached per thread.

    ``endpoint_url`` overrides the endpoint; without it boto3 resolves ``AWS_ENDPOINT_URL_<SERVICE>``
    and ``AWS_ENDPOINT_URL`` itself."""
    session = aws_session()
    region = aws_region(region, service)
    retries = _aws_retries()
    endpoint = endpoint_url or _aws_env_endpoint(service)
    key = ("aws", service, region, endpoint, os.environ.get("AWS_PROFILE"), tuple(sorted(retries.items())))

    def build() -> Any:
        from botocore.config import Config

        from launcher import __version__

        config = Config(retries=retries, user_agent_extra=f"launcher/{__version__}")
        return session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)

    return _cached(key, build)


def _aws_env_endpoint(service: str) -> str | None:
    """The endpoint boto3 will pick up from the environment (for the cache key only)."""
    specific = "AWS_ENDPOINT_URL_" + service.upper().replace("-", "_")
    return os.environ.get(specific) or os.environ.get("AWS_ENDPOINT_URL") or None


def _aws_retries() -> dict[str, Any]:
    mode = os.environ.get("AWS_RETRY_MODE") or "standard"
    if mode not in AWS_RETRY_MODES:
        raise SpecError(f"AWS_RETRY_MODE={mode!r} is not a botocore retry mode.{did_you_mean(mode, AWS_RETRY_MODES)} "
                        f"To fix: set it to one of {', '.join(AWS_RETRY_MODES)}, or unset it (default standard)")
    raw = os.environ.get("AWS_MAX_ATTEMPTS") or str(AWS_DEFAULT_MAX_ATTEMPTS)
    if not raw.isdigit() or int(raw) < 1:
        raise SpecError(f"AWS_MAX_ATTEMPTS={raw!r} is not a whole number of attempts. "
                        f"To fix: set it to 1 or more (the first try included), or unset it (default {AWS_DEFAULT_MAX_ATTEMPTS})")
    return {"mode": mode, "total_max_attempts": int(raw)}


# --- Google -----------------------------------------------------------------------------------------
def gcs_client(project: str | None = None) -> Any:
    """A google-cloud-storage Client, cached per thread. With ``STORAGE_EMULATOR_HOST`` set (the
    library's own convention) it uses anonymous credentials and a placeholder project."""
    storage = _require("google.cloud.storage", "google-cloud-storage", "gcp", "Talking to Cloud Storage")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")

    def build() -> Any:
        if emulator:
            return storage.Client(project=project or EMULATOR_PROJECT, credentials=_anonymous())
        return storage.Client(project=project)

    return _cached(("gcs", project, emulator), build)


def vertex_client(kind: str, region: str, *, channel: Any = None) -> Any:
    """A Vertex AI ``aiplatform_v1`` service client: ``kind`` is job, model, endpoint or prediction.

    Against Google: the regional endpoint ``{region}-aiplatform.googleapis.com`` (Vertex resources live
    in one region and the global endpoint does not serve them). With ``VERTEX_EMULATOR_HOST=host:port``
    or an injected ``channel``: the service's gRPC transport on a plaintext channel, no credentials."""
    if kind not in VERTEX_SERVICES:
        raise ValueError(f"unknown Vertex AI client kind {kind!r}; one of {', '.join(VERTEX_SERVICES)}")
    if not region:
        raise SpecError("no Vertex AI region is set. To fix: set vertex.region in the job spec (e.g. us-central1)")
    service, module = VERTEX_SERVICES[kind]
    purpose = f"Talking to Vertex AI's {service}"
    aiplatform_v1 = _require("google.cloud.aiplatform_v1", "google-cloud-aiplatform", "gcp", purpose)
    client_class = getattr(aiplatform_v1, f"{service}Client")
    emulator = os.environ.get("VERTEX_EMULATOR_HOST")
    if channel is None and not emulator:
        endpoint = f"{region}-aiplatform.googleapis.com"
        return _cached(("vertex", kind, endpoint), lambda: client_class(client_options={"api_endpoint": endpoint}))
    transports = importlib.import_module(f"google.cloud.aiplatform_v1.services.{module}.transports")
    transport_class = getattr(transports, f"{service}GrpcTransport")

    def build() -> Any:
        return client_class(transport=transport_class(channel=channel or _plaintext_channel(emulator), credentials=_anonymous()))

    return build() if channel is not None else _cached(("vertex", kind, region, emulator), build)


def pubsub_publisher(*, channel: Any = None) -> Any:
    """A Pub/Sub PublisherClient, cached per thread. The library itself honours
    ``PUBSUB_EMULATOR_HOST`` (plaintext channel, anonymous credentials); ``channel`` injects one."""
    pubsub_v1 = _require("google.cloud.pubsub_v1", "google-cloud-pubsub", "gcp", "Publishing to Pub/Sub")
    if channel is not None:
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    return _cached(("pubsub", os.environ.get("PUBSUB_EMULATOR_HOST")), pubsub_v1.PublisherClient)


def logging_client(*, channel: Any = None) -> Any:
    """Cloud Logging's ``LoggingServiceV2Client`` (``list_log_entries``, ``tail_log_entries``), cached
    per thread. Cloud Logging has no emulator: ``LOGGING_EMULATOR_HOST=host:port`` or ``channel`` points
    it at a plaintext gRPC fake."""
    services = _require("google.cloud.logging_v2.services.logging_service_v2", "google-cloud-logging", "gcp", "Reading Cloud Logging")
    from google.cloud.logging_v2.services.logging_service_v2.transports import LoggingServiceV2GrpcTransport

    return _emulated("LOGGING_EMULATOR_HOST", services.LoggingServiceV2Client, LoggingServiceV2GrpcTransport, channel)


def secret_manager_client(*, channel: Any = None) -> Any:
    """Secret Manager's ``SecretManagerServiceClient`` (a job reads the Hub token with it), cached per
    thread. Secret Manager has no emulator: ``SECRETMANAGER_EMULATOR_HOST=host:port`` or ``channel``
    points it at a plaintext gRPC fake."""
    secretmanager = _require("google.cloud.secretmanager_v1", "google-cloud-secret-manager", "gcp", "Reading a secret from Secret Manager")
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import SecretManagerServiceGrpcTransport

    return _emulated("SECRETMANAGER_EMULATOR_HOST", secretmanager.SecretManagerServiceClient, SecretManagerServiceGrpcTransport, channel)


def _emulated(variable: str, client_class: Any, transport_class: Any, channel: Any) -> Any:
    """A Google client, cached per thread: Google's endpoint, or with ``channel`` or ``$variable``
    (``host:port``) the service's gRPC transport on a plaintext channel without credentials."""
    emulator = os.environ.get(variable)
    if channel is None and not emulator:
        return _cached((client_class.__name__,), client_class)

    def build() -> Any:
        transport = transport_class(channel=channel or _plaintext_channel(emulator), credentials=_anonymous())
        return client_class(transport=transport)

    return build() if channel is not None else _cached((client_class.__name__, emulator), build)


def google_access_token(resource: str) -> str:
    """An OAuth access token of the Application Default Credentials (google-auth), for a registry login
    to ``resource``; errors translated like every Google call's."""
    google_auth = _require("google.auth", "google-auth", "gcp", f"Logging in to {resource}")
    from google.auth.transport.requests import Request

    with google_errors(resource, "artifactregistry.repositories.uploadArtifacts"):
        credentials, _ = google_auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(Request())
    return credentials.token


def _anonymous() -> Any:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def _plaintext_channel(host: str) -> Any:
    import grpc

    return grpc.insecure_channel(host.removeprefix("http://"))


# --- errors at the border ---------------------------------------------------------------------------
AWS_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "ResourceNotFound", "ResourceNotFoundException"}
AWS_DENIED = {"403", "AccessDenied", "AccessDeniedException", "Forbidden", "AllAccessDisabled", "UnauthorizedOperation"}
AWS_BAD_CREDENTIALS = {"ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "InvalidClientTokenId",
                       "SignatureDoesNotMatch", "UnrecognizedClientException"}
AWS_THROTTLED = {"Throttling", "ThrottlingException", "SlowDown", "TooManyRequestsException", "RequestLimitExceeded",
                 "ProvisionedThroughputExceededException"}
AWS_CHANGED = {"412", "PreconditionFailed"}


def aws_errors(resource: str, permission: str, *, missing: str = "check the name") -> contextlib.AbstractContextManager:
    """Translate a botocore / boto3 exception raised in the block into a launcher error about
    ``resource`` (``s3://bucket/key``, ``training job NAME``): NotFoundError ending ``To fix:
    <missing>``, or BackendError naming ``permission`` (``s3:GetObject``) for a refusal. Other
    exceptions pass unchanged."""
    return _translated(_from_botocore, resource, permission, missing)


@contextlib.contextmanager
def _translated(translate: Callable[..., LauncherError | None], *context: str) -> Iterator[None]:
    try:
        yield
    except LauncherError:
        raise
    except Exception as exc:
        mapped = translate(exc, *context)
        if mapped is None:
            raise
        raise mapped from exc


def _from_botocore(exc: Exception, resource: str, permission: str, missing: str) -> LauncherError | None:
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:
        return None
    if isinstance(exc, errors.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), error.get("Message") or ""
        detail = f"{code}: {message}" if message else code
        if code in AWS_NOT_FOUND:
            return NotFoundError(f"{resource} does not exist ({detail}). To fix: {missing}")
        if code in AWS_DENIED:
            return BackendError(f"AWS denied access to {resource} ({detail}). "
                                f"To fix: grant {permission} to the identity 'aws sts get-caller-identity' shows")
        if code in AWS_BAD_CREDENTIALS:
            return BackendError(f"AWS rejected the credentials used for {resource} ({detail}). "
                                "To fix: refresh them ('aws sso login', 'aws configure') or set AWS_PROFILE")
        if code in AWS_THROTTLED:
            return BackendError(f"AWS throttled the calls on {resource} ({code}) and retries ran out. "
                                "To fix: try again in a minute, or raise AWS_MAX_ATTEMPTS")
        if code in AWS_CHANGED:
            return BackendError(f"{resource} changed while it was being read ({code}). To fix: run the command again")
        return BackendError(f"AWS refused a call on {resource} ({detail}). To fix: correct what AWS names, then retry")
    if isinstance(exc, errors.NoCredentialsError):
        return BackendError(f"no AWS credentials were found to access {resource}. "
                            "To fix: run 'aws configure' or 'aws sso login', or set AWS_PROFILE")
    if isinstance(exc, errors.EndpointConnectionError | errors.ConnectionClosedError | errors.ReadTimeoutError):
        return BackendError(f"cannot reach AWS for {resource} ({exc}). "
                            "To fix: check the network, AWS_REGION and AWS_ENDPOINT_URL, then retry")
    boto3_errors = sys.modules.get("boto3.exceptions")  # s3transfer's, e.g. retries on a dropped stream ran out
    if isinstance(exc, errors.BotoCoreError) or (boto3_errors is not None and isinstance(exc, boto3_errors.Boto3Error)):
        return BackendError(f"the AWS SDK failed on {resource} ({_first_line(exc)}). To fix: correct what it names, then retry")
    return None


def google_errors(resource: str, permission: str, *, missing: str = "check the name") -> contextlib.AbstractContextManager:
    """Translate a google-api-core / google-auth exception raised in the block into a launcher error
    about ``resource`` (``gs://bucket/key``, ``CustomJob NAME``): NotFoundError ending ``To fix:
    <missing>``, or BackendError naming ``permission`` (``storage.objects.get``). Other exceptions
    pass unchanged."""
    return _translated(_from_google, resource, permission, missing)


def _from_google(exc: Exception, resource: str, permission: str, missing: str) -> LauncherError | None:
    api = sys.modules.get("google.api_core.exceptions")
    auth = sys.modules.get("google.auth.exceptions")
    requests = sys.modules.get("requests")
    login = "To fix: run 'gcloud auth application-default login', or set GOOGLE_APPLICATION_CREDENTIALS"
    if auth is not None and isinstance(exc, auth.DefaultCredentialsError | auth.RefreshError):
        return BackendError(f"no usable Google credentials to access {resource} ({_first_line(exc)}). {login}")
    if auth is not None and isinstance(exc, auth.TransportError):
        return BackendError(f"cannot reach Google's token endpoint for {resource} ({_first_line(exc)}). "
                            "To fix: check the network, then retry")
    if requests is not None and isinstance(exc, requests.exceptions.ConnectionError):
        return BackendError(f"cannot reach Google Cloud for {resource} ({_first_line(exc)}). "
                            "To fix: check the network (and STORAGE_EMULATOR_HOST if you use an emulator), then retry")
    if api is None or not isinstance(exc, api.GoogleAPICallError):
        return None
    detail = f"{exc.code or ''} {_first_line(exc.message)}".strip() or type(exc).__name__
    if isinstance(exc, api.NotFound):
        return NotFoundError(f"{resource} does not exist ({detail}). To fix: {missing}")
    if isinstance(exc, api.Forbidden | api.PermissionDenied):
        return BackendError(f"Google Cloud denied access to {resource} ({detail}). "
                            f"To fix: grant {permission} to the account 'gcloud auth list' shows as active")
    if isinstance(exc, api.Unauthorized | api.Unauthenticated):
        return BackendError(f"Google Cloud rejected the credentials used for {resource} ({detail}). {login}")
    if isinstance(exc, api.TooManyRequests | api.ResourceExhausted):
        return BackendError(f"Google Cloud throttled or hit a quota on {resource} ({detail}). "
                            "To fix: try again later, or raise the quota it names in the console's Quotas page")
    if isinstance(exc, api.PreconditionFailed):
        return BackendError(f"{resource} changed while it was being read ({detail}). To fix: run the command again")
    if isinstance(exc, api.ServiceUnavailable):
        return BackendError(f"cannot reach Google Cloud for {resource} ({detail}). To fix: check the network, then retry")
    return BackendError(f"Google Cloud refused a call on {resource} ({detail}). To fix: correct what it names, then retry")


def _first_line(value: object) -> str:
    """The first line of an error's text (SDK messages can run to pages), or its class name."""
    text = str(value or "").strip()
    if text:
        return text.splitlines()[0][:300]
    return type(value).__name__ if isinstance(value, BaseException) else ""
