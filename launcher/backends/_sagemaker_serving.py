"""The SageMaker backend's serving group: an endpoint is a SageMaker real-time endpoint, driven with boto3.

    launcher deploy JOB_ID --backend sagemaker [--name N] [--option instance_type=ml.g5.xlarge]
    launcher invoke N "prompt";  launcher endpoints;  launcher undeploy N

What ``deploy`` creates, in order (every name derived from the endpoint name and a digest of what the
resource holds, so the same request twice names the same resources):

* **model data** in S3: a SageMaker job's own ``model.tar.gz`` when the model is a SageMaker job id (or
  an ``s3://...tar.gz``); otherwise the local model dir packed (sorted members, zeroed times) and
  uploaded once to ``s3://BUCKET/PREFIX/models/<content digest>/model.tar.gz``.
* **Model** ``<endpoint>-m<digest>``: the serving image (``--option serving_image``, env
  ``LAUNCHER_SAGEMAKER_SERVING_IMAGE``: the image of ``container/Dockerfile.serve``; ``lmi`` or ``vllm``
  resolve AWS's image through sagemaker-core),
  ``ModelDataUrl``, and an environment of settings only (no secret values).
* **EndpointConfig** ``<endpoint>-c<digest>``: one variant ``AllTraffic`` (instance type and count) and a
  ``DataCaptureConfig`` (Input and Output, JSON content types, ``InitialSamplingPercentage``, the
  destination ``s3://BUCKET/PREFIX/capture`` or ``--capture``, ``KmsKeyId`` if given). SageMaker writes
  the capture records itself, under ``<dest>/<endpoint>/AllTraffic/yyyy/mm/dd/hh/``.
* **Endpoint** ``<endpoint>``, tagged ``launcher-endpoint``; ``endpoints()`` lists those tags.
* **Autoscaling** with ``--option max_instances=N``: Application Auto Scaling's scalable target on the
  variant (``instance_count`` to N) and a target-tracking policy on SageMakerVariantInvocationsPerInstance
  (``--option invocations_per_instance``, default 70 a minute), tagged ``launcher-autoscaling``; a deploy
  without it, and ``undeploy``, deregister it.

SageMaker has no idempotency token on any of these creates, and names are unique per account and
region: each is looked up (Describe) before it is created, and a create whose answer was lost (a
dropped connection, a 5xx) is followed by another look-up, so a retry never makes a second one. An
endpoint of that name that already serves the same config is re-attached; one serving another config is
moved to the new one with **UpdateEndpoint** (blue/green: SageMaker keeps the old fleet serving until the
new one is healthy), and the old config and model are deleted once it is InService. A Failed endpoint is
deleted and created again.

``deploy`` waits for InService against its own deadline (``LAUNCHER_DEPLOY_TIMEOUT``, default 1800 s).
On Failed it raises with SageMaker's ``FailureReason`` and the endpoint's last CloudWatch log lines
(``/aws/sagemaker/Endpoints/<name>``). Before creating anything it runs the serving contract on this
machine (``_serving_check``), unless ``--no-local-check``.

``invoke`` goes through ``sagemaker-runtime`` ``InvokeEndpoint`` (a chat request on ``/invocations``;
an ``InferenceId`` per call, which the capture records carry); ``undeploy`` deletes the endpoint, its
config and its model (the capture and the model data stay in S3). ``invoke --stream`` goes through
``InvokeEndpointWithResponseStream``: the container answers ``"stream": true`` with server-sent events,
which SageMaker relays as PayloadParts. Invoke and undeploy use the region the endpoint index recorded
at deploy (``--option region``), else the environment's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.backends.base import Endpoint, EndpointSpec
from launcher.backends._serving_check import checked_options, serving_compute, short_digest
from launcher.errors import BackendError, NotFoundError, SpecError, UserInputError

VARIANT = "AllTraffic"
TAG = "launcher-endpoint"
ENDPOINT_LOG_GROUP = "/aws/sagemaker/Endpoints/{name}"
DEFAULT_DEPLOY_TIMEOUT = 1800.0
DEFAULT_ACCELERATOR = "A10G:1"  # -> ml.g5.xlarge through the training mapping
AWS_IMAGES = {"lmi": "djl-lmi", "djl-lmi": "djl-lmi", "vllm": "vllm"}
OPTION_KEYS = {
    "instance_type": "the instance type (default: the one the training mapping gives 'accelerator')",
    "accelerator": "a GPU kind and count, e.g. L4:1 (default A10G:1 -> ml.g5.xlarge)",
    "instance_count": "instances behind the endpoint (default 1)",
    "serving_image": "the serving image URI (default env LAUNCHER_SAGEMAKER_SERVING_IMAGE); lmi or vllm: AWS's",
    "image_version": "the version of AWS's lmi / vllm image",
    "kms_key_id": "a KMS key for the capture and the instance volumes",
    "role_arn": "the execution role (default LAUNCHER_SAGEMAKER_ROLE_ARN, else the profile's)",
    "bucket": "the bucket for model data and capture (default LAUNCHER_SAGEMAKER_BUCKET, else the profile's)",
    "prefix": "the key prefix in the bucket (default launcher)",
    "region": "the region (default AWS_REGION)",
    "startup_timeout": "seconds SageMaker gives the container to pass /ping (default 900)",
    "max_instances": "autoscaling: up to this many instances (from instance_count), by target tracking",
    "invocations_per_instance": "autoscaling's target: invocations per instance per minute (default 70)",
}
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_TAG = "launcher-autoscaling"  # on an endpoint whose variant we registered with Application Auto Scaling
DEFAULT_INVOCATIONS_PER_INSTANCE = 70.0  # AWS's own example target
# Request fields SageMaker's validation messages name -> the option that sets them.
DEPLOY_KEYS = {
    "InstanceType": "--option instance_type", "InitialInstanceCount": "--option instance_count",
    "Image": "--option serving_image", "KmsKeyId": "--option kms_key_id", "ExecutionRoleArn": "--option role_arn",
    "InitialSamplingPercentage": "--capture-percent", "DestinationS3Uri": "--option bucket",
    "ModelDataUrl": "the model (JOB_ID_OR_MODEL_DIR)",
}


def deploy_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``--option`` keys, checked before anything is made: an unknown key is one line, exit 2."""
    found = checked_options(options, OPTION_KEYS, "SageMaker", ("instance_count", "startup_timeout", "max_instances"))
    if found.get("max_instances", 1 << 30) < found.get("instance_count", 1):
        raise UserInputError(f"--option max_instances={found['max_instances']} is below instance_count={found.get('instance_count', 1)}. "
                             "To fix: raise max_instances, or lower instance_count")
    if "invocations_per_instance" in found:
        try:
            found["invocations_per_instance"] = float(found["invocations_per_instance"])
        except ValueError:
            found["invocations_per_instance"] = 0.0
        if found["invocations_per_instance"] <= 0 or "max_instances" not in found:
            raise UserInputError(f"--option invocations_per_instance={options['invocations_per_instance']} needs a positive number "
                                 "and max_instances. To fix: e.g. --option max_instances=4 --option invocations_per_instance=70")
    return found


def serving_instance_type(options: dict[str, Any]) -> str:
    if options.get("instance_type"):
        return str(options["instance_type"])
    from launcher.backends.sagemaker import instance_type
    compute = serving_compute(options, DEFAULT_ACCELERATOR, "accelerator=A10G:1, or instance_type=...")
    return instance_type(compute)[0]


def folder_digest(folder: Path) -> str:
    """SHA-256 over the model dir's files (relative paths and contents): its S3 name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def pack(folder: Path) -> bytes:
    """``folder`` as SageMaker's model.tar.gz (files at the archive's root), the same bytes every time."""
    buffer = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def resource_names(endpoint: str, model_body: dict[str, Any], config_body: dict[str, Any]) -> tuple[str, str]:
    """(model name, endpoint config name): the endpoint's name and a digest of what each holds."""
    model = f"{endpoint[:52]}-m{short_digest(model_body['PrimaryContainer'], model_body['ExecutionRoleArn'])}"
    config = f"{endpoint[:52]}-c{short_digest(model, config_body['ProductionVariants'], config_body.get('DataCaptureConfig'))}"
    return model, config


def endpoint_state(status: str) -> tuple[str, str]:
    """SageMaker's EndpointStatus as the shared endpoint states (Creating | InService | Failed | Stopped)."""
    if status == "InService":
        return "InService", ""
    if status in ("Failed", "OutOfService"):
        return "Failed", status
    if status == "Deleting":
        return "Stopped", "deleting"
    return "Creating", status  # Creating, Updating, SystemUpdating, RollingBack, UpdateRollbackFailed


class SageMakerServing:
    """Mixed into ``SageMakerBackend``: ``deploy``, ``invoke``, ``undeploy``, ``endpoints``."""

    name: str

    # --- deploy ------------------------------------------------------------------------------------
    def deploy(self, model: Path, spec: EndpointSpec) -> Endpoint:
        from launcher.backends import _serving_check
        from launcher.backends._local_serving import check_name
        from launcher.backends.sagemaker import _errors

        check_name(spec.name)
        options = deploy_options(spec.options)
        place = self._place(options)
        instance = serving_instance_type(options)
        image = self._serving_image(options, place.region, instance)
        model = Path(model)
        data_uri = spec.model_uri if spec.model_uri.startswith("s3://") and spec.model_uri.endswith(".tar.gz") else ""
        digest = "" if data_uri else folder_digest(model)
        if not data_uri:
            data_uri = place.uri("models", digest[:16], "model.tar.gz")
        model_body, config_body = self.serving_bodies(spec, place, options, image, instance, data_uri)
        model_name, config_name = resource_names(spec.name, model_body, config_body)
        model_body["ModelName"] = model_name
        config_body["EndpointConfigName"] = config_name
        config_body["ProductionVariants"][0]["ModelName"] = model_name
        sagemaker = self._client("sagemaker", place.region)
        existing = self._endpoint(spec.name, place.region)
        if existing is not None and existing["EndpointConfigName"] == config_name and existing["EndpointStatus"] != "Failed":
            described = self._wait_in_service(spec.name, place.region)
            self._autoscale(spec.name, options, place.region)
            return self._describe_endpoint(described, reattached=True)
        if spec.local_check and image not in self._aws_images:
            _serving_check.check_contract(model, "sagemaker", spec.name, max_new_tokens_cap=spec.max_new_tokens_cap)
        if digest:
            from launcher.backends.sagemaker import _upload_once

            _upload_once(self._client("s3", place.region), data_uri, pack(model))
        self._create_once("model", model_name, lambda: sagemaker.create_model(**model_body),
                          lambda: sagemaker.describe_model(ModelName=model_name))
        self._create_once("endpoint config", config_name, lambda: sagemaker.create_endpoint_config(**config_body),
                          lambda: sagemaker.describe_endpoint_config(EndpointConfigName=config_name))
        tags = [{"Key": TAG, "Value": spec.name}, {"Key": "launcher-source", "Value": _tag_value(spec.source)}]
        old_config = None
        if existing is not None and existing["EndpointStatus"] == "Failed":
            self._delete_endpoint(spec.name, place.region)
            existing = None
        if existing is None:
            try:
                self._create_once("endpoint", spec.name, lambda: sagemaker.create_endpoint(
                    EndpointName=spec.name, EndpointConfigName=config_name, Tags=tags),
                    lambda: self._endpoint(spec.name, place.region, raise_missing=True))
            except Exception:
                if self._endpoint(spec.name, place.region) is None:  # refused (a quota, a permission): nothing
                    self._delete_config(config_name, place.region)  # serves the config and model, so leave none
                raise
        else:
            self._wait_in_service(spec.name, place.region)  # an update needs it at rest
            old_config = existing["EndpointConfigName"]
            with _errors(f"endpoint {spec.name}", "sagemaker:UpdateEndpoint", keys=DEPLOY_KEYS):
                sagemaker.update_endpoint(EndpointName=spec.name, EndpointConfigName=config_name)
        described = self._wait_in_service(spec.name, place.region)
        if old_config and old_config != config_name:
            self._delete_config(old_config, place.region)
        self._autoscale(spec.name, options, place.region)
        return self._describe_endpoint(described)

    def _autoscale(self, name: str, options: dict[str, Any], region: str | None) -> None:
        """Application Auto Scaling on the variant: with ``max_instances``, a scalable target from
        instance_count to it and a target-tracking policy on invocations per instance (both upserts, so a
        re-deploy applies changed numbers), marked by the endpoint's ``launcher-autoscaling`` tag; without
        it, a target an earlier deploy made (the tag says so) is removed. Callers who never autoscale need
        no Application Auto Scaling permission."""
        from launcher.backends.sagemaker import _errors

        if "max_instances" not in options:
            self._stop_autoscaling(name, region)
            return
        scaling = self._client("application-autoscaling", region)
        resource = f"endpoint/{name}/variant/{VARIANT}"
        with _errors(f"autoscaling of endpoint {name}", "application-autoscaling:RegisterScalableTarget", keys=DEPLOY_KEYS):
            scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION,
                                             MinCapacity=int(options.get("instance_count", 1)), MaxCapacity=int(options["max_instances"]))
            scaling.put_scaling_policy(
                PolicyName=f"{name}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
                ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    "TargetValue": float(options.get("invocations_per_instance", DEFAULT_INVOCATIONS_PER_INSTANCE)),
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                    "ScaleInCooldown": 300, "ScaleOutCooldown": 60})
        with _errors(f"endpoint {name}", "sagemaker:AddTags"):
            self._client("sagemaker", region).add_tags(ResourceArn=self._endpoint(name, region)["EndpointArn"],
                                                       Tags=[{"Key": SCALING_TAG, "Value": str(options["max_instances"])}])

    def _stop_autoscaling(self, name: str, region: str | None) -> None:
        """Deregister the variant's scalable target (its policies go with it) if our tag says there is one."""
        from launcher.backends.sagemaker import _errors

        endpoint = self._endpoint(name, region)
        if endpoint is None:
            return
        sagemaker = self._client("sagemaker", region)
        with _errors(f"endpoint {name}", "sagemaker:ListTags"):
            tags = sagemaker.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"]
        if not any(t["Key"] == SCALING_TAG for t in tags):
            return
        with _errors(f"autoscaling of endpoint {name}", "application-autoscaling:DeregisterScalableTarget"):
            try:
                self._client("application-autoscaling", region).deregister_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/{VARIANT}", ScalableDimension=SCALABLE_DIMENSION)
            except NotFoundError:
                pass
        with _errors(f"endpoint {name}", "sagemaker:DeleteTags"):
            sagemaker.delete_tags(ResourceArn=endpoint["EndpointArn"], TagKeys=[SCALING_TAG])

    @property
    def _aws_images(self) -> set[str]:
        return getattr(self, "_resolved_aws_images", set())

    def _serving_image(self, options: dict[str, Any], region: str, instance: str) -> str:
        image = options.get("serving_image") or os.environ.get("LAUNCHER_SAGEMAKER_SERVING_IMAGE")
        if not image:
            raise SpecError("no serving image for SageMaker. To fix: --option serving_image=ECR_URI (the image of "
                            "container/Dockerfile.serve: 'launcher image push serve' prints it), or set LAUNCHER_SAGEMAKER_SERVING_IMAGE, "
                            "or serving_image=lmi|vllm "
                            "for AWS's own (pip install 'launcher[sagemaker-images]')")
        if image in AWS_IMAGES:
            from launcher.backends.sagemaker import _require_image_resolver

            image_uris = _require_image_resolver()
            try:
                uri = image_uris.retrieve(AWS_IMAGES[image], region=region, version=options.get("image_version"),
                                          instance_type=instance, image_scope="inference")
            except ValueError as exc:
                raise SpecError(f"no AWS {image} image for {instance} in {region} ({exc}). To fix: set --option "
                                "image_version, or serving_image=ECR_URI") from None
            self._resolved_aws_images = {*self._aws_images, uri}  # our entrypoint is not what it runs: no local check
            return uri
        return str(image)

    def serving_bodies(self, spec: EndpointSpec, place, options: dict[str, Any], image: str, instance: str,
                       data_uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The CreateModel and CreateEndpointConfig requests (without their names)."""
        environment = {"LAUNCHER_BEHIND_PLATFORM_AUTH": "1", "LAUNCHER_SERVE_HOST": "0.0.0.0",
                       "LAUNCHER_ENDPOINT_NAME": spec.name, "LAUNCHER_MAX_NEW_TOKENS_CAP": str(spec.max_new_tokens_cap),
                       "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
        model_body: dict[str, Any] = {
            "ExecutionRoleArn": place.role_arn,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": data_uri, "Environment": environment},
            "Tags": [{"Key": TAG, "Value": spec.name}],
        }
        variant = {"VariantName": VARIANT, "ModelName": "", "InstanceType": instance,
                   "InitialInstanceCount": int(options.get("instance_count", 1)), "InitialVariantWeight": 1.0,
                   "ContainerStartupHealthCheckTimeoutInSeconds": int(options.get("startup_timeout", 900))}
        capture = {"EnableCapture": spec.capture_percent > 0, "InitialSamplingPercentage": int(round(spec.capture_percent)),
                   "DestinationS3Uri": spec.capture or place.uri("capture"),
                   "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                   "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
        config_body: dict[str, Any] = {"ProductionVariants": [variant], "DataCaptureConfig": capture,
                                       "Tags": [{"Key": TAG, "Value": spec.name}]}
        if spec.capture and not spec.capture.startswith("s3://"):
            raise UserInputError(f"capture destination '{spec.capture}' is not in S3: SageMaker writes capture to S3 only. "
                                 "To fix: give an s3:// prefix, or leave it out (s3://BUCKET/PREFIX/capture)")
        if options.get("kms_key_id"):
            capture["KmsKeyId"] = config_body["KmsKeyId"] = options["kms_key_id"]
        return model_body, config_body

    def _create_once(self, kind: str, name: str, create, describe) -> None:
        """Look ``name`` up, create it if missing; after a transient failure (the answer may have been lost
        after SageMaker acted) look it up again before retrying. An 'already exists' answer is success."""
        from launcher.backends.sagemaker import _code, _errors, _retrying, _transient

        if self._exists(describe):
            return
        with _errors(f"{kind} {name}", f"sagemaker:Create{kind.title().replace(' ', '')}", keys=DEPLOY_KEYS):
            for attempt in _retrying():
                with attempt:
                    try:
                        create()
                    except Exception as exc:
                        message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", ""))
                        if _code(exc) in ("ResourceInUse", "ValidationException") and "already exist" in message:
                            return
                        if _transient(exc) and self._exists(describe):
                            return  # it landed; the answer did not
                        raise

    @staticmethod
    def _exists(describe) -> bool:
        from launcher.backends.sagemaker import _code

        try:
            describe()
            return True
        except NotFoundError:
            return False
        except Exception as exc:
            message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", ""))
            if _code(exc) == "ValidationException" and "Could not find" in message:
                return False
            raise

    def _endpoint(self, name: str, region: str | None = None, raise_missing: bool = False) -> dict[str, Any] | None:
        from launcher.backends.sagemaker import _errors, _retrying

        sagemaker = self._client("sagemaker", region)
        try:
            with _errors(f"endpoint {name}", "sagemaker:DescribeEndpoint"):
                for attempt in _retrying():
                    with attempt:
                        return sagemaker.describe_endpoint(EndpointName=name)
        except NotFoundError:
            if raise_missing:
                raise
            return None
        return None  # pragma: no cover - _retrying re-raises

    def _wait_in_service(self, name: str, region: str | None) -> dict[str, Any]:
        deadline = time.monotonic() + float(os.environ.get("LAUNCHER_DEPLOY_TIMEOUT", DEFAULT_DEPLOY_TIMEOUT))
        delay = 0.5
        while True:
            endpoint = self._endpoint(name, region)
            if endpoint is None:
                raise NotFoundError(f"SageMaker endpoint '{name}' disappeared while it was starting (deleted by someone else?). "
                                    "To fix: deploy it again")
            status = endpoint["EndpointStatus"]
            if status == "InService":
                return endpoint
            if status in ("Failed", "OutOfService", "UpdateRollbackFailed"):
                reason = (endpoint.get("FailureReason") or "no reason recorded").strip().splitlines()[0]
                error = BackendError(f"SageMaker endpoint '{name}' is {status}: {reason}. To fix: read its log lines above "
                                     f"(CloudWatch Logs {ENDPOINT_LOG_GROUP.format(name=name)}), fix the cause and deploy again; "
                                     f"'launcher undeploy {name}' removes it meanwhile")
                error.details = tuple(self._endpoint_log_tail(name, region))
                raise error
            if time.monotonic() > deadline:
                raise BackendError(f"SageMaker endpoint '{name}' is still {status} after the deadline (LAUNCHER_DEPLOY_TIMEOUT); "
                                   f"it keeps starting on SageMaker. To fix: 'launcher endpoints' shows when it is InService, "
                                   f"or 'launcher undeploy {name}'")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _endpoint_log_tail(self, name: str, region: str | None, lines: int = 15) -> list[str]:
        """The last lines of the endpoint's CloudWatch logs (every stream); none when there are none."""
        from launcher.backends.sagemaker import _code

        logs = self._client("logs", region)
        group = ENDPOINT_LOG_GROUP.format(name=name)
        try:
            streams = logs.describe_log_streams(logGroupName=group).get("logStreams", [])
            events = []
            for stream in streams:
                events += logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"],
                                              startFromHead=False, limit=lines).get("events", [])
        except Exception as exc:
            if _code(exc) in ("ResourceNotFoundException", "AccessDeniedException"):
                return []
            raise
        return [e["message"] for e in sorted(events, key=lambda e: e["timestamp"])][-lines:]

    # --- invoke ------------------------------------------------------------------------------------
    def invoke(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({k: v for k, v in request.items() if k != "stream"}).encode()
        with self._invoke_errors(name):
            answer = self._client("sagemaker-runtime").invoke_endpoint(
                EndpointName=name, Body=body, ContentType="application/json", Accept="application/json", InferenceId=uuid.uuid4().hex)
        return json.loads(answer["Body"].read())

    def invoke_stream(self, name: str, request: dict[str, Any]) -> Iterator[str]:
        """InvokeEndpointWithResponseStream: the container's server-sent events arrive as PayloadParts."""
        from launcher.backends.base import streamed_text

        body = json.dumps({**request, "stream": True}).encode()
        with self._invoke_errors(name):
            answer = self._client("sagemaker-runtime").invoke_endpoint_with_response_stream(
                EndpointName=name, Body=body, ContentType="application/json", Accept="text/event-stream", InferenceId=uuid.uuid4().hex)

        def parts() -> Iterator[bytes]:
            for event in answer["Body"]:
                if "PayloadPart" in event:
                    yield event["PayloadPart"]["Bytes"]
                for kind in ("ModelStreamError", "InternalStreamFailure"):
                    if kind in event:
                        raise BackendError(f"endpoint '{name}' failed mid-answer ({kind}): {event[kind].get('Message', '')}")

        with self._invoke_errors(name):
            yield from streamed_text(parts(), name)

    @contextlib.contextmanager
    def _invoke_errors(self, name: str) -> Iterator[None]:
        """sagemaker-runtime's answers in our words: a missing endpoint, the container's own 4xx/5xx."""
        from launcher.backends.sagemaker import _errors

        try:
            with _errors(f"endpoint {name}", "sagemaker:InvokeEndpoint"):
                yield
        except BackendError as exc:
            original = (getattr(exc.__cause__, "response", None) or {})
            error = original.get("Error") or {}
            if error.get("Code") == "ValidationError" and "not found" in error.get("Message", ""):
                raise NotFoundError(f"no SageMaker endpoint '{name}' in service. To fix: run 'launcher endpoints --backend sagemaker'") from None
            if error.get("Code") == "ModelError":
                status = int(original.get("OriginalStatusCode") or error.get("OriginalStatusCode") or 500)
                message = _server_message(original.get("OriginalMessage") or error.get("OriginalMessage") or error.get("Message", ""))
                cls = UserInputError if 400 <= status < 500 else BackendError
                raise cls(f"endpoint '{name}' answered {status}: {message}") from None
            raise
        except NotFoundError:
            raise NotFoundError(f"no SageMaker endpoint '{name}'. To fix: run 'launcher endpoints --backend sagemaker'") from None

    # --- undeploy, list ----------------------------------------------------------------------------
    def undeploy(self, name: str) -> Endpoint:
        from launcher.backends.sagemaker import _iso

        endpoint = self._endpoint(name)
        if endpoint is None:
            raise NotFoundError(f"no SageMaker endpoint '{name}'. To fix: run 'launcher endpoints --backend sagemaker'")
        capture = (endpoint.get("DataCaptureConfig") or {}).get("DestinationS3Uri", "")
        self._stop_autoscaling(name, None)  # before the endpoint goes, as AWS asks
        self._delete_endpoint(name, None)
        self._delete_config(endpoint["EndpointConfigName"], None)
        return Endpoint(name=name, backend=self.name, state="Stopped", model="", created_at=_iso(endpoint.get("CreationTime")),
                        message="undeployed: endpoint, endpoint config and model deleted (capture and model data kept in S3)",
                        capture=f"{capture.rstrip('/')}/{name}/" if capture else "")

    def _delete_endpoint(self, name: str, region: str | None) -> None:
        from launcher.backends.sagemaker import _errors

        with _errors(f"endpoint {name}", "sagemaker:DeleteEndpoint"):
            try:
                self._client("sagemaker", region).delete_endpoint(EndpointName=name)
            except NotFoundError:
                return
        deadline = time.monotonic() + float(os.environ.get("LAUNCHER_DEPLOY_TIMEOUT", DEFAULT_DEPLOY_TIMEOUT))
        while self._endpoint(name, region) is not None:  # Deleting, until it is gone (the capture is flushed by then)
            if time.monotonic() > deadline:
                raise BackendError(f"SageMaker endpoint '{name}' is still being deleted after the deadline. "
                                   "To fix: 'launcher endpoints' later")
            time.sleep(0.5)

    def _delete_config(self, config_name: str, region: str | None) -> None:
        """Delete an endpoint config and the models it names (ours: they carry our tag's name prefix)."""
        from launcher.backends.sagemaker import _errors

        sagemaker = self._client("sagemaker", region)
        try:
            with _errors(f"endpoint config {config_name}", "sagemaker:DescribeEndpointConfig"):
                config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
        except NotFoundError:
            return
        with _errors(f"endpoint config {config_name}", "sagemaker:DeleteEndpointConfig"):
            sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
        for variant in config.get("ProductionVariants", []):
            try:
                with _errors(f"model {variant['ModelName']}", "sagemaker:DeleteModel"):
                    sagemaker.delete_model(ModelName=variant["ModelName"])
            except NotFoundError:
                pass

    def endpoints(self) -> list[Endpoint]:
        from launcher.backends.sagemaker import _errors

        if not self.configured():
            return []
        sagemaker = self._client("sagemaker")
        found = []
        with _errors("endpoints", "sagemaker:ListEndpoints"):
            summaries = [s for page in sagemaker.get_paginator("list_endpoints").paginate() for s in page["Endpoints"]]
        for summary in summaries:
            with _errors(f"tags of {summary['EndpointArn']}", "sagemaker:ListTags"):
                tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=summary["EndpointArn"]).get("Tags", [])}
            if tags.get(TAG) != summary["EndpointName"]:
                continue  # not ours
            described = self._endpoint(summary["EndpointName"])
            if described is not None:
                found.append(self._describe_endpoint(described, source=tags.get("launcher-source", "")))
        return sorted(found, key=lambda e: e.created_at, reverse=True)

    def _describe_endpoint(self, endpoint: dict[str, Any], reattached: bool = False, source: str = "") -> Endpoint:
        from launcher.backends.sagemaker import _iso

        name = endpoint["EndpointName"]
        region = endpoint["EndpointArn"].split(":")[3]
        state, message = endpoint_state(endpoint["EndpointStatus"])
        if endpoint.get("FailureReason") and state == "Failed":
            message = endpoint["FailureReason"].splitlines()[0]
        capture = (endpoint.get("DataCaptureConfig") or {})
        variants = endpoint.get("ProductionVariants") or [{}]
        return Endpoint(
            name=name, backend=self.name, state=state,
            url=f"https://runtime.sagemaker.{region}.amazonaws.com/endpoints/{name}/invocations",
            created_at=_iso(endpoint.get("CreationTime")), message=message, reattached=reattached,
            capture=f"{capture['DestinationS3Uri'].rstrip('/')}/{name}/" if capture.get("DestinationS3Uri") else "",
            extra={"endpoint_config": endpoint["EndpointConfigName"], "arn": endpoint["EndpointArn"], "region": region,
                   "instances": variants[0].get("CurrentInstanceCount"), "logs": f"CloudWatch Logs {ENDPOINT_LOG_GROUP.format(name=name)}",
                   "console": f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/endpoints/{name}",
                   **({"source": source} if source else {})},
        )


def _server_message(text: str) -> str:
    """The serving container's own error message out of SageMaker's ModelError wrapping."""
    match = re.search(r'with message "(.*)"', text, re.S)
    raw = match[1] if match else text
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.strip().splitlines()[0][:300] if raw.strip() else "no message"


def _tag_value(text: str) -> str:
    return re.sub(r"[^\w.:/=+\-@ ]", "_", text)[:256]
