"""SageMaker real-time endpoints that really serve: moto's SageMaker and sagemaker-runtime, extended in-process.

moto 5.2.5 stores CreateModel / CreateEndpointConfig / CreateEndpoint, calls every endpoint InService at
once, answers InvokeEndpoint with ``b"body"``, lacks UpdateEndpoint, and refuses ml.g5 and newer
instance types in CreateEndpointConfig. Installed into the ``ThreadedMotoServer`` the tests start (same
process), ``SageMakerEndpointsFake`` makes an endpoint what SageMaker makes of it, against the same
server's S3 and CloudWatch Logs:

* **CreateModel** refuses a name in use (``ValidationException: Cannot create already existing model``)
  and keeps ``PrimaryContainer`` as given (its ``Environment`` included).
* **CreateEndpointConfig** refuses a name in use and accepts any ``ml.<family>.<size>`` instance type:
  moto's own list stops before ml.g5, so its ``FakeEndpointConfig.validate_instance_type`` is replaced
  while the fake is installed (the instance type is recorded, never provisioned).
* **CreateEndpoint** refuses a name in use (SageMaker's "Cannot create already existing endpoint"), a
  quota a test set (``refuse_quota``: ``ResourceLimitExceeded`` in SageMaker's words, counting the
  instances of live endpoints) and an action a test denied (``deny``: ``AccessDeniedException`` in IAM's
  words), then answers at once with the endpoint **Creating** while a runner thread stands the container
  up: the model's ``ModelDataUrl`` (a ``model.tar.gz``) is downloaded from S3 and unpacked into
  ``<workdir>/<endpoint>/<n>/model`` (what SageMaker puts at ``/opt/ml/model``), and
  ``python -m entrypoints.serve serve --model <that folder>`` (``docker run IMAGE serve``; the image is
  recorded, never pulled: this interpreter is the image) runs with the container's ``Environment`` and
  ``SAGEMAKER_BIND_TO_PORT=<a free port>``. Two liberties: it binds 127.0.0.1 (``LAUNCHER_SERVE_HOST``
  overridden; the container would bind 0.0.0.0 behind SageMaker's auth) and, when the config's
  ``DataCaptureConfig`` enables capture, the fake passes ``--capture <DestinationS3Uri> --capture-percent
  <InitialSamplingPercentage> --endpoint-name <endpoint> --variant AllTraffic --capture-flush-s 1``.
  **On SageMaker the platform writes the capture records, not the container**; here our server writes
  them in SageMaker's documented format and layout (``<dest>/<endpoint>/AllTraffic/yyyy/mm/dd/hh/*.jsonl``,
  one record per request) straight to moto's S3 and stands in for it. SageMaker's own records lack our
  ``eventMetadata.launcher`` extras, and it delivers them minutes later, not within a second.
  Its output goes line by line to CloudWatch Logs group ``/aws/sagemaker/Endpoints/<endpoint>``, stream
  ``AllTraffic/i-<hex>``. **InService** once ``/ping`` answers 200; **Failed** with SageMaker's
  FailureReason ("The primary container for production variant AllTraffic did not pass the ping health
  check. ...") if the process dies or ``ready_timeout_s`` passes.
* **UpdateEndpoint** (moto lacks it): **Updating**; a new container for the new config is stood up
  beside the old one, which keeps answering; once it is healthy the endpoint switches to it
  (``EndpointConfigName``, variants, capture) and the old one is stopped: **InService**. A new container
  that fails leaves the old one serving, InService with the FailureReason set (SageMaker's rollback).
* **DeleteEndpoint**: **Deleting** at once; a thread sends SIGTERM to the container (requests in flight
  finish and the capture is flushed), then the endpoint is gone (describe: "Could not find endpoint").
* **sagemaker-runtime InvokeEndpoint** is forwarded to the container's ``/invocations``: the body, its
  ``Content-Type``, ``Accept`` and the ``InferenceId`` (``X-Amzn-SageMaker-Inference-Id``). A 2xx answer
  comes back as is with ``x-Amzn-Invoked-Production-Variant`` (moto takes a response's status from its
  ``status`` header, so each answer sets both); any other is SageMaker's ``ModelError``
  (HTTP 424, "Received client error (400) from primary with message ..."), with ``OriginalStatusCode`` and
  ``OriginalMessage``. An endpoint that is not InService: ``ValidationError``.
* **InvokeEndpointWithResponseStream** (moto routes neither its path nor the action): forwarded the same
  way; the container's body is relayed as it arrives, each piece one ``PayloadPart`` event in AWS's
  event-stream framing (moto's own ``EventStreamEncoder``), which botocore's parser reads.

Not emulated: more than one variant or instance (``InitialInstanceCount`` is recorded; one container
serves), serverless and async inference, autoscaling, the instance's
hardware, VPC and network isolation, IAM and the execution role (never assumed), KMS (recorded only),
the container's startup health-check timeout (``ready_timeout_s`` stands in), and SageMaker's own
latency. The FailureReason of a rollback is the fake's own wording.

Patched in moto (``install``, undone by ``close``): ``SageMakerResponse.create_model``,
``create_endpoint_config``, ``create_endpoint``, ``delete_endpoint`` (wrapped), ``update_endpoint``
(added), ``FakeEndpointConfig.validate_instance_type`` and ``SageMakerRuntimeResponse.invoke_endpoint``
(replaced), ``invoke_endpoint_with_response_stream`` (added), its URL path (added, kept) and
``DomainDispatcherApplication.infer_service_region_host`` (wrapped: it sends only ``.../invocations`` to
sagemaker-runtime).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moto.core.eventstream import EventStreamEncoder
from moto.core.responses import ActionResult, EmptyResult
from moto.core.utils import utcnow as _now
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.sagemaker.exceptions import SagemakerClientError, ValidationError
from moto.sagemaker.models import FakeEndpointConfig
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemakerruntime import urls as runtime_urls
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

from fakes.sagemaker import ResourceLimitExceeded
from fakes.serving import ServingProcess, free_port

VARIANT = "AllTraffic"
STREAM_PATH = "{0}/endpoints/(?P<name>[^/]+)/invocations-response-stream$"  # moto 5.2.5 routes no such path
QUOTA_MESSAGE = (
    "The account-level service limit '{instance_type} for endpoint usage' is {limit} Instances, with current "
    "utilization of {used} Instances and a request delta of {delta} Instances. Please use AWS Service Quotas to "
    "request an increase for this quota. If AWS Service Quotas is not available, contact AWS support to request "
    "an increase for this quota."
)
DENIED_MESSAGE = ("User: arn:aws:iam::123456789012:user/tester is not authorized to perform: sagemaker:{action} on "
                  "resource: {arn} because no identity-based policy allows the sagemaker:{action} action")
PING_FAILED = ("The primary container for production variant AllTraffic did not pass the ping health check. "
               "Please check CloudWatch logs for this endpoint.")


class AccessDenied(SagemakerClientError):
    code = "AccessDeniedException"


@dataclass
class _Container:
    """One serving container of an endpoint (one config's)."""

    config: str
    process: ServingProcess | None = None
    folder: Path | None = None


@dataclass
class _Endpoint:
    name: str
    region: str
    account: str
    current: _Container | None = None
    thread: threading.Thread | None = None
    generation: int = 0
    containers: list[_Container] = field(default_factory=list)


class SageMakerEndpointsFake:
    """Endpoints that serve (module docstring). A context manager; the control API for tests:
    ``refuse_quota``, ``deny``, ``endpoint``, ``containers``, ``calls``."""

    def __init__(self, endpoint: str, *, workdir: str | Path | None = None, ready_timeout_s: float = 180.0):
        self.endpoint_url = endpoint
        self._own_workdir = None if workdir else tempfile.TemporaryDirectory(prefix="sagemaker-endpoints-")
        self.workdir = Path(workdir or self._own_workdir.name)
        self.ready_timeout_s = ready_timeout_s
        self._models: dict[str, dict[str, Any]] = {}  # name -> PrimaryContainer as given
        self._endpoints: dict[str, _Endpoint] = {}
        self._quotas: dict[str, int] = {}
        self._denied: set[str] = set()
        self._lock = threading.RLock()
        self._originals: dict[tuple[Any, str], Any] = {}
        self.calls: list[tuple[str, str]] = []  # (action, name) of every create / update / delete / invoke

    # --- control API -----------------------------------------------------------------------------
    def refuse_quota(self, instance_type: str, limit: int = 0) -> None:
        """``instance_type`` gets a quota of ``limit`` instances over the live endpoints."""
        self._quotas[instance_type] = limit

    def deny(self, action: str) -> None:
        """The caller may not perform ``action`` (CreateModel, CreateEndpointConfig, CreateEndpoint, ...)."""
        self._denied.add(action)

    def containers(self, name: str) -> list[_Container]:
        """Every container the endpoint has had, oldest first."""
        return list(self._endpoints[name].containers)

    # --- install ---------------------------------------------------------------------------------
    def install(self) -> SageMakerEndpointsFake:
        if self._originals:
            return self
        if hasattr(SageMakerResponse, "update_endpoint"):
            raise RuntimeError("another SageMakerEndpointsFake is installed (or moto now has UpdateEndpoint: revisit this fake)")
        fake = self

        def wrap(name: str, before=None, after=None):
            original = getattr(SageMakerResponse, name)
            self._originals[(SageMakerResponse, name)] = original

            def method(response: Any) -> Any:
                if before is not None:
                    early = before(response)
                    if early is not None:
                        return early
                result = original(response)
                if after is not None:
                    after(response)
                return result

            setattr(SageMakerResponse, name, method)

        wrap("create_model", before=self._before_create_model)
        wrap("create_endpoint_config", before=self._before_create_config)
        wrap("create_endpoint", before=self._before_create_endpoint, after=self._after_create_endpoint)
        wrap("delete_endpoint", before=self._delete_endpoint)
        SageMakerResponse.update_endpoint = lambda response: fake._update_endpoint(response)
        self._originals[(FakeEndpointConfig, "validate_instance_type")] = FakeEndpointConfig.validate_instance_type
        FakeEndpointConfig.validate_instance_type = _validate_instance_type
        self._originals[(SageMakerRuntimeResponse, "invoke_endpoint")] = SageMakerRuntimeResponse.invoke_endpoint
        SageMakerRuntimeResponse.invoke_endpoint = lambda response: fake._invoke(response)
        SageMakerRuntimeResponse.invoke_endpoint_with_response_stream = lambda response: fake._invoke(response, stream=True)
        runtime_urls.url_paths.setdefault(STREAM_PATH, runtime_urls.response.dispatch)  # read when the server's app is built
        infer = self._originals[(DomainDispatcherApplication, "infer_service_region_host")] = DomainDispatcherApplication.infer_service_region_host

        def runtime_stream_too(dispatcher: Any, environ: dict[str, Any], path: str) -> str | None:  # moto sends only .../invocations there
            host = infer(dispatcher, environ, path)
            return "runtime." + host.removeprefix("api.") if host and host.startswith("api.sagemaker.") and path.endswith(
                "/invocations-response-stream") else host

        DomainDispatcherApplication.infer_service_region_host = runtime_stream_too
        return self

    def close(self) -> None:
        for endpoint in list(self._endpoints.values()):
            for container in endpoint.containers:
                if container.process is not None:
                    container.process.kill()
        for endpoint in list(self._endpoints.values()):
            if endpoint.thread is not None:
                endpoint.thread.join(15)
        for (owner, name), original in self._originals.items():
            setattr(owner, name, original)
        if self._originals:
            del SageMakerResponse.update_endpoint
            del SageMakerRuntimeResponse.invoke_endpoint_with_response_stream
        self._originals = {}
        if self._own_workdir is not None:
            self._own_workdir.cleanup()

    def __enter__(self) -> SageMakerEndpointsFake:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the control plane -----------------------------------------------------------------------
    def _check_denied(self, response: Any, action: str, arn: str) -> None:
        if action in self._denied:
            raise AccessDenied(DENIED_MESSAGE.format(action=action, arn=arn))

    def _before_create_model(self, response: Any) -> None:
        backend, name = response.sagemaker_backend, response._get_param("ModelName")
        self.calls.append(("CreateModel", name))
        self._check_denied(response, "CreateModel", f"arn:aws:sagemaker:{backend.region_name}:{backend.account_id}:model/{name}")
        if name in backend._models:
            raise ValidationError(f'Cannot create already existing model "{backend._models[name].arn}".')
        self._models[name] = dict(response._get_param("PrimaryContainer") or {})

    def _before_create_config(self, response: Any) -> None:
        backend, name = response.sagemaker_backend, response._get_param("EndpointConfigName")
        self.calls.append(("CreateEndpointConfig", name))
        self._check_denied(response, "CreateEndpointConfig", name)
        if name in backend.endpoint_configs:
            raise ValidationError(f'Cannot create already existing endpoint configuration "{backend.endpoint_configs[name].endpoint_config_arn}".')

    def _before_create_endpoint(self, response: Any) -> None:
        backend, name = response.sagemaker_backend, response._get_param("EndpointName")
        self.calls.append(("CreateEndpoint", name))
        arn = f"arn:aws:sagemaker:{backend.region_name}:{backend.account_id}:endpoint/{name.lower()}"
        self._check_denied(response, "CreateEndpoint", arn)
        if name in backend.endpoints:
            raise ValidationError(f'Cannot create already existing endpoint "{arn}".')
        config = backend.describe_endpoint_config(response._get_param("EndpointConfigName"))
        variant = config["ProductionVariants"][0]
        instance_type, count = variant.get("InstanceType", ""), int(variant.get("InitialInstanceCount", 1))
        limit = self._quotas.get(instance_type)
        if limit is not None:
            used = 0
            for live in backend.endpoints.values():
                live_config = backend.endpoint_configs.get(live.endpoint_config_name)
                if live_config is not None and live.endpoint_status != "Deleting":
                    used += sum(int(v.get("InitialInstanceCount", 1)) for v in live_config.production_variants
                                if v.get("InstanceType") == instance_type)
            if used + count > limit:
                raise ResourceLimitExceeded(QUOTA_MESSAGE.format(instance_type=instance_type, limit=limit, used=used, delta=count))

    def _after_create_endpoint(self, response: Any) -> None:
        backend, name = response.sagemaker_backend, response._get_param("EndpointName")
        moto_endpoint = backend.endpoints[name]
        moto_endpoint.endpoint_status = "Creating"
        state = _Endpoint(name=name, region=backend.region_name, account=backend.account_id)
        with self._lock:
            self._endpoints[name] = state
        state.thread = threading.Thread(target=self._bring_up, args=(backend, state, moto_endpoint.endpoint_config_name, False),
                                        name=f"sagemaker-endpoint-{name}", daemon=True)
        state.thread.start()

    def _update_endpoint(self, response: Any) -> Any:
        backend, name = response.sagemaker_backend, response._get_param("EndpointName")
        config_name = response._get_param("EndpointConfigName")
        self.calls.append(("UpdateEndpoint", name))
        backend.describe_endpoint(name)  # moto's error for an endpoint that does not exist
        backend.describe_endpoint_config(config_name)
        moto_endpoint = backend.endpoints[name]
        if moto_endpoint.endpoint_status != "InService":
            raise ValidationError(f'Cannot update in-progress endpoint "{moto_endpoint.arn}".')
        moto_endpoint.endpoint_status, moto_endpoint.last_modified_time = "Updating", _now()
        state = self._endpoints[name]
        state.thread = threading.Thread(target=self._bring_up, args=(backend, state, config_name, True),
                                        name=f"sagemaker-endpoint-{name}-update", daemon=True)
        state.thread.start()
        return ActionResult({"EndpointArn": moto_endpoint.arn})

    def _delete_endpoint(self, response: Any) -> Any:
        backend, name = response.sagemaker_backend, response._get_param("EndpointName")
        self.calls.append(("DeleteEndpoint", name))
        backend.describe_endpoint(name)  # moto's error for an endpoint that does not exist
        moto_endpoint = backend.endpoints[name]
        state = self._endpoints.get(name)
        if state is None:  # made before the fake was installed: moto's own delete
            return None
        moto_endpoint.endpoint_status, moto_endpoint.last_modified_time = "Deleting", _now()

        def tear_down() -> None:
            if state.thread is not None and state.thread is not threading.current_thread():
                state.thread.join(self.ready_timeout_s + 30)
            for container in state.containers:
                if container.process is not None and container.process.alive():
                    container.process.stop()  # SIGTERM: requests in flight finish, the capture is flushed
            with contextlib.suppress(KeyError):
                del backend.endpoints[name]
            with self._lock:
                self._endpoints.pop(name, None)

        threading.Thread(target=tear_down, name=f"sagemaker-endpoint-{name}-delete", daemon=True).start()
        return EmptyResult()

    # --- the runner ------------------------------------------------------------------------------
    def _bring_up(self, backend: Any, state: _Endpoint, config_name: str, update: bool) -> None:
        moto_endpoint = backend.endpoints[state.name]
        container = _Container(config=config_name)
        state.containers.append(container)
        try:
            why = self._start(backend, state, container)
        except Exception as exc:  # the fake's own bug, or an unreadable model: a failed endpoint that says so
            why = f"the SageMaker endpoints fake failed: {type(exc).__name__}: {exc}"
        if moto_endpoint.endpoint_status == "Deleting":
            return
        now = _now()
        if not why:
            previous = state.current
            state.current = container
            config = backend.endpoint_configs[config_name]
            moto_endpoint.endpoint_config_name = config_name
            moto_endpoint.production_variants = moto_endpoint._process_production_variants(config.production_variants)
            moto_endpoint.data_capture_config = config.data_capture_config
            moto_endpoint.failure_reason = None
            moto_endpoint.endpoint_status, moto_endpoint.last_modified_time = "InService", now
            if previous is not None and previous.process is not None:
                previous.process.stop()
            return
        reason = PING_FAILED if "health check" in why or "exited" in why else why
        if update:  # SageMaker rolls back: the old fleet keeps serving
            moto_endpoint.failure_reason = f"Update rolled back: {reason}"
            moto_endpoint.endpoint_status, moto_endpoint.last_modified_time = "InService", now
        else:
            moto_endpoint.failure_reason = reason
            moto_endpoint.endpoint_status, moto_endpoint.last_modified_time = "Failed", now
        if container.process is not None:
            container.process.stop(5)

    def _start(self, backend: Any, state: _Endpoint, container: _Container) -> str:
        import boto3

        config = backend.endpoint_configs[container.config]
        variant = config.production_variants[0]
        model = self._models.get(variant["ModelName"]) or {}
        state.generation += 1
        folder = self.workdir / state.name / str(state.generation)
        container.folder = folder
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=state.region)
        s3 = session.client("s3", endpoint_url=self.endpoint_url)
        logs = session.client("logs", endpoint_url=self.endpoint_url)
        _download_model(s3, model.get("ModelDataUrl", ""), folder / "model")
        port = free_port()
        env = {**os.environ, **(model.get("Environment") or {}), "SAGEMAKER_BIND_TO_PORT": str(port),
               "LAUNCHER_SERVE_HOST": "127.0.0.1", "AWS_ENDPOINT_URL": self.endpoint_url,
               "AWS_REGION": state.region, "AWS_DEFAULT_REGION": state.region}
        args = ["serve", "--model", str(folder / "model")]
        capture = config.data_capture_config or {}
        if capture.get("EnableCapture"):
            args += ["--capture", capture["DestinationS3Uri"], "--capture-percent", str(capture.get("InitialSamplingPercentage", 100)),
                     "--endpoint-name", state.name, "--variant", variant.get("VariantName", VARIANT), "--capture-flush-s", "1"]
        group, stream = f"/aws/sagemaker/Endpoints/{state.name}", f"{VARIANT}/i-{secrets.token_hex(8)}"
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        lock = threading.Lock()

        def on_line(line: str) -> None:
            with lock:
                logs.put_log_events(logGroupName=group, logStreamName=stream,
                                    logEvents=[{"timestamp": int(time.time() * 1000), "message": line}])

        container.process = ServingProcess(args, env, folder / "cwd", port, "/ping", on_line).start()
        return container.process.wait_ready(self.ready_timeout_s)

    # --- the runtime -----------------------------------------------------------------------------
    def _invoke(self, response: Any, stream: bool = False) -> Any:
        name = response.path.split("/")[2] if response.path.startswith("/endpoints/") else response._get_params().get("EndpointName")
        state = self._endpoints.get(name)
        region = getattr(response, "region", "us-east-1")
        self.calls.append(("InvokeEndpointWithResponseStream" if stream else "InvokeEndpoint", name))
        if state is None or state.current is None or state.current.process is None or not state.current.process.alive():
            body = json.dumps({"__type": "ValidationError", "message": f"Endpoint {name} of account 123456789012 not found."})
            return 400, {"status": 400, "x-amzn-ErrorType": "ValidationError", "Content-Type": "application/json"}, body
        body = response.raw_body if isinstance(response.raw_body, bytes) else str(response.body).encode()
        headers = {"Content-Type": response.headers.get("Content-Type") or "application/octet-stream",
                   "Accept": response.headers.get("Accept") or "*/*"}
        inference_id = response.headers.get("X-Amzn-SageMaker-Inference-Id")
        if inference_id:
            headers["X-Amzn-SageMaker-Inference-Id"] = inference_id
        request = urllib.request.Request(state.current.process.url + "/invocations", data=body, headers=headers, method="POST")
        try:
            answer = urllib.request.urlopen(request, timeout=120)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            kind = "client" if exc.code < 500 else "server"
            stream_arn = f"arn:aws:logs:{region}:123456789012:log-group:/aws/sagemaker/Endpoints/{name}"
            error = {"__type": "ModelError", "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL", "LogStreamArn": stream_arn,
                     "OriginalStatusCode": exc.code, "OriginalMessage": text,
                     "message": f'Received {kind} error ({exc.code}) from primary with message "{text}". See {stream_arn} '
                                "in account 123456789012 for more information."}
            return 424, {"status": 424, "x-amzn-ErrorType": "ModelError", "Content-Type": "application/json"}, json.dumps(error)
        content_type = answer.headers.get("Content-Type", "application/json")
        if not stream:
            with answer:
                return 200, {"status": 200, "Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": VARIANT}, answer.read()

        def parts() -> Any:  # each piece of the container's body as it arrives, one PayloadPart event each
            encoder = EventStreamEncoder()
            with answer:
                while piece := answer.read1(65536):
                    yield encoder.encode_message({":event-type": "PayloadPart", ":message-type": "event",
                                                  ":content-type": "application/octet-stream"}, piece)

        return 200, {"status": 200, "Content-Type": "application/vnd.amazon.eventstream",
                     "X-Amzn-SageMaker-Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": VARIANT}, parts()


def _validate_instance_type(self: Any, instance_type: str) -> None:
    """Any ``ml.<family>.<size>`` (moto's list stops before ml.g5)."""
    if not re.fullmatch(r"ml\.[a-z0-9]+\.[a-z0-9]+", instance_type or ""):
        raise ValidationError(message=f"Value '{instance_type}' at 'instanceType' failed to satisfy constraint: "
                                      "Member must satisfy enum value set")


def _download_model(s3: Any, uri: str, dest: Path) -> None:
    """ModelDataUrl (a model.tar.gz) unpacked into ``dest``, as SageMaker fills /opt/ml/model."""
    if not uri.startswith("s3://") or not uri.endswith(".tar.gz"):
        raise ValueError(f"ModelDataUrl {uri!r}: the fake serves an s3:// model.tar.gz only")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "model.tar.gz"
        s3.download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
