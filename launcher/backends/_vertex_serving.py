"""The Vertex AI backend's serving group: an endpoint is a Vertex AI Endpoint with one deployed Model.

    launcher deploy JOB_ID --backend vertex [--name N] [--option machine_type=g2-standard-8]
    launcher invoke N "prompt";  launcher endpoints;  launcher undeploy N

What ``deploy`` creates (clients from ``launcher.clouds.vertex_client("model" | "endpoint" | "prediction")``):

* **model files** in Cloud Storage: a Vertex job's own ``gs://.../jobs/<id>/model/`` when the model is a
  Vertex job id (or a ``gs://`` folder); otherwise the local model dir uploaded once to
  ``gs://BUCKET/PREFIX/models/<content digest>/`` (a ``_complete`` marker last).
* **Model** (ModelService.UploadModel, an LRO), display name ``<endpoint>-m<digest>``, labels
  ``launcher_endpoint`` and ``launcher_model=<digest>``: the serving image (``--option serving_image``,
  env ``LAUNCHER_VERTEX_SERVING_IMAGE``: the image of ``container/Dockerfile.serve``), ``predict_route`` ``/predict``, ``health_route`` ``/health``,
  port 8080, and an environment of settings only (no secret values), among them ``LAUNCHER_CAPTURE``:
  on Vertex AI **our container writes the capture records** (SageMaker's format and layout) to
  ``gs://BUCKET/PREFIX/capture`` (or ``--capture``); Vertex's own request-response logging goes to
  BigQuery in another format and is not used.
* **Endpoint** ``projects/P/locations/R/endpoints/<name>`` (EndpointService.CreateEndpoint with
  ``endpoint_id`` = the name: the resource name is ours, so the look-up is a Get), labelled
  ``launcher_endpoint``.
* **DeployModel** (an LRO) of that Model onto the Endpoint: the machine type and accelerator from the
  training mapping (``--option accelerator=L4:1`` by default, or ``machine_type``), ``min_replicas`` /
  ``max_replicas`` (default 1 / 1), 100% of the traffic. Its LRO is waited on with our own deadline
  (``LAUNCHER_DEPLOY_TIMEOUT``, default 1800 s), not the SDK's.

Every create is preceded by a look-up (the Model by its ``launcher_model`` label, the Endpoint by its
name, a deployment by the deployed model's Model), so a retried deploy (or one whose answer was lost)
makes nothing twice; an endpoint already serving the same Model on the same machines is re-attached. A
new model on the same endpoint is deployed beside the old one with all the traffic, then the old one is
undeployed and its Model deleted. ``undeploy`` undeploys every deployed model, deletes their Models and
the Endpoint (the capture and the model files stay in Cloud Storage). Before creating anything the
serving contract runs on this machine (``_serving_check``), unless ``--no-local-check``.
``invoke`` is PredictionService.Predict with ``{"instances": [{"messages": [...], "max_tokens": N}]}``;
its one prediction is returned as an OpenAI chat completion. ``invoke --stream`` is StreamRawPredict: the
chat body (``"stream": true``) goes to the container's predict route as is, and its server-sent events
come back as HttpBody messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.backends.base import Endpoint, EndpointSpec
from launcher.backends._serving_check import checked_options, serving_compute, short_digest
from launcher.errors import BackendError, NotFoundError, SpecError, UserInputError

ENDPOINT_LABEL, MODEL_LABEL = "launcher_endpoint", "launcher_model"
DEFAULT_ACCELERATOR = "L4:1"
DEFAULT_DEPLOY_TIMEOUT = 1800.0
PORT = 8080
OPTION_KEYS = {
    "machine_type": "the machine type (default: the one the training mapping gives 'accelerator')",
    "accelerator": "a GPU kind and count, e.g. L4:1 (the default)",
    "min_replicas": "replicas at least (default 1)",
    "max_replicas": "replicas at most (default min_replicas)",
    "serving_image": "the serving image URI (default env LAUNCHER_VERTEX_SERVING_IMAGE)",
    "service_account": "the service account the container runs as (default: the profile's)",
    "project": "the project (default LAUNCHER_VERTEX_PROJECT)",
    "region": "the region (default LAUNCHER_VERTEX_REGION)",
    "staging_bucket": "the bucket for model files and capture (default LAUNCHER_VERTEX_BUCKET)",
    "prefix": "the prefix in the bucket (default launcher)",
    "kms_key_name": "a Cloud KMS key (CMEK) for the model, the endpoint and the capture objects",
}
DEPLOY_KEYS = {
    "machine_type": "--option machine_type", "accelerator": "--option accelerator", "replica": "--option min_replicas / max_replicas",
    "image_uri": "--option serving_image", "service_account": "--option service_account", "artifact_uri": "the model (JOB_ID_OR_MODEL_DIR)",
}


def deploy_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``--option`` keys, checked before anything is made, with the replica counts' defaults."""
    found = checked_options(options, OPTION_KEYS, "Vertex AI", ("min_replicas", "max_replicas"))
    found.setdefault("min_replicas", 1)
    found.setdefault("max_replicas", found["min_replicas"])
    if found["max_replicas"] < found["min_replicas"]:
        raise UserInputError(f"--option max_replicas={found['max_replicas']} is below min_replicas={found['min_replicas']}. "
                             "To fix: raise max_replicas")
    return found


def serving_machine(options: dict[str, Any]) -> dict[str, Any]:
    """machine_type, accelerator_type and count: the training mapping for ``accelerator``, or ``machine_type``."""
    from launcher.backends.vertex import machine_spec
    compute = serving_compute(options, DEFAULT_ACCELERATOR, "accelerator=L4:1")
    machine = machine_spec(compute)
    if options.get("machine_type"):
        machine["machine_type"] = str(options["machine_type"])
        if not options.get("accelerator"):
            machine.update(accelerator_type="ACCELERATOR_TYPE_UNSPECIFIED", gpus=0)
    return machine


class VertexServing:
    """Mixed into ``VertexBackend``: ``deploy``, ``invoke``, ``undeploy``, ``endpoints``."""

    name: str

    def _serving_place(self, options: dict[str, Any] | None = None):
        return self._place(options if options is not None else getattr(self, "_options", {}))

    # --- deploy ------------------------------------------------------------------------------------
    def deploy(self, model: Path, spec: EndpointSpec) -> Endpoint:
        from google.cloud import aiplatform_v1 as v1

        from launcher import clouds
        from launcher.backends import _serving_check
        from launcher.backends._local_serving import check_name
        from launcher.backends._sagemaker_serving import folder_digest
        from launcher.backends.vertex import _errors, _upload_dataset_folder, service_account

        check_name(spec.name)
        options = deploy_options(spec.options)
        place = self._serving_place(options)
        machine = serving_machine(options)
        image = options.get("serving_image") or os.environ.get("LAUNCHER_VERTEX_SERVING_IMAGE")
        if not image:
            raise SpecError("no serving image for Vertex AI. To fix: --option serving_image=REGISTRY/IMAGE (the image of "
                            "container/Dockerfile.serve: 'launcher image push serve' prints it), or set LAUNCHER_VERTEX_SERVING_IMAGE")
        capture = spec.capture or place.uri("capture")
        if not capture.startswith("gs://"):
            raise UserInputError(f"capture destination '{capture}' is not in Cloud Storage. To fix: give a gs:// prefix, or leave it out")
        model = Path(model)
        artifact = spec.model_uri if spec.model_uri.startswith("gs://") and not spec.model_uri.endswith((".tar.gz", ".tgz")) else ""
        digest = "" if artifact else folder_digest(model)
        if not artifact:
            artifact = place.uri("models", digest[:16]) + "/"
        env = {"LAUNCHER_BEHIND_PLATFORM_AUTH": "1", "LAUNCHER_SERVE_HOST": "0.0.0.0", "LAUNCHER_ENDPOINT_NAME": spec.name,
               "LAUNCHER_MAX_NEW_TOKENS_CAP": str(spec.max_new_tokens_cap), "LAUNCHER_CAPTURE": capture,
               "LAUNCHER_CAPTURE_PERCENT": f"{spec.capture_percent:g}", "HF_HUB_DISABLE_TELEMETRY": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        if options.get("kms_key_name"):
            env["LAUNCHER_CAPTURE_KMS_KEY"] = options["kms_key_name"]  # the container writes capture with it
        container = v1.ModelContainerSpec(image_uri=image, env=[v1.EnvVar(name=k, value=v) for k, v in env.items()],
                                          ports=[v1.Port(container_port=PORT)], predict_route=_serving_check.PREDICT_ROUTE,
                                          health_route=_serving_check.HEALTH_ROUTE)
        model_digest = short_digest(artifact, image, env)
        resources = v1.DedicatedResources(
            machine_spec=v1.MachineSpec(machine_type=machine["machine_type"], accelerator_type=machine["accelerator_type"],
                                        accelerator_count=machine["gpus"]),
            min_replica_count=options["min_replicas"], max_replica_count=options["max_replicas"])
        endpoint_name = f"{place.parent}/endpoints/{spec.name}"
        endpoints = clouds.vertex_client("endpoint", place.region)
        models = clouds.vertex_client("model", place.region)

        existing = self._get_endpoint(endpoint_name, place)
        found_model = self._find_model(place, model_digest)
        if existing is not None and found_model is not None:
            for deployed in existing.deployed_models:
                if deployed.model == found_model.name and _same_resources(deployed.dedicated_resources, resources) \
                        and existing.traffic_split.get(deployed.id) == 100:
                    return self._describe_endpoint(existing, place, reattached=True)
        if spec.local_check:
            _serving_check.check_contract(model, "vertex", spec.name, max_new_tokens_cap=spec.max_new_tokens_cap)
        if digest:
            _upload_dataset_folder(model, artifact)
        labels = {ENDPOINT_LABEL: spec.name, MODEL_LABEL: model_digest}
        if found_model is None:
            body = v1.Model(display_name=f"{spec.name[:52]}-m{model_digest}", artifact_uri=artifact, container_spec=container,
                            labels=labels, encryption_spec=_encryption(options))
            with _errors(f"model {body.display_name}", "aiplatform.models.upload", place, keys=DEPLOY_KEYS):
                account = service_account(options)
                upload = models.upload_model(parent=place.parent, model=body, **({"service_account": account} if account else {}))
                model_name = self._wait(upload, f"UploadModel of {body.display_name}").model
        else:
            model_name = found_model.name
        if existing is None:
            with _errors(f"endpoint {endpoint_name}", "aiplatform.endpoints.create", place, keys=DEPLOY_KEYS):
                try:
                    created = endpoints.create_endpoint(parent=place.parent, endpoint_id=spec.name,
                                                        endpoint=v1.Endpoint(display_name=spec.name, labels={ENDPOINT_LABEL: spec.name},
                                                                             encryption_spec=_encryption(options)))
                    self._wait(created, f"CreateEndpoint {spec.name}")
                except Exception as exc:
                    if type(exc).__name__ != "AlreadyExists":
                        raise  # AlreadyExists: an earlier try whose answer was lost made it
            existing = self._get_endpoint(endpoint_name, place)
        old = [d.id for d in existing.deployed_models if d.model != model_name]
        if not any(d.model == model_name for d in existing.deployed_models):
            deployed = v1.DeployedModel(model=model_name, display_name=f"{spec.name[:52]}-d{model_digest}", dedicated_resources=resources)
            if service_account(options):
                deployed.service_account = service_account(options)
            with _errors(f"endpoint {spec.name}", "aiplatform.endpoints.deploy", place, keys=DEPLOY_KEYS):
                operation = endpoints.deploy_model(endpoint=endpoint_name, deployed_model=deployed, traffic_split={"0": 100})
                self._wait(operation, f"DeployModel onto {spec.name}")
        for deployed_id in old:  # blue/green: the new one serves, now the old one goes
            self._undeploy_one(endpoint_name, deployed_id, place)
        return self._describe_endpoint(self._get_endpoint(endpoint_name, place), place)

    def _wait(self, operation: Any, what: str) -> Any:
        import concurrent.futures

        timeout = float(os.environ.get("LAUNCHER_DEPLOY_TIMEOUT", DEFAULT_DEPLOY_TIMEOUT))
        try:
            return operation.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise BackendError(f"Vertex AI's {what} did not finish within the deadline (LAUNCHER_DEPLOY_TIMEOUT, {timeout:g} s); "
                               f"it goes on in Vertex AI (operation {operation.operation.name}). To fix: 'launcher endpoints' "
                               "later, or deploy again once it is done") from None

    def _get_endpoint(self, name: str, place) -> Any | None:
        from launcher import clouds
        from launcher.backends.vertex import _errors, _retrying

        try:
            with _errors(f"endpoint {name}", "aiplatform.endpoints.get", place):
                for retry in _retrying():
                    with retry:
                        return clouds.vertex_client("endpoint", place.region).get_endpoint(name=name, timeout=30)
        except NotFoundError:
            return None
        return None  # pragma: no cover

    def _find_model(self, place, digest: str) -> Any | None:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        with _errors(f"models in {place.parent}", "aiplatform.models.list", place):
            found = list(clouds.vertex_client("model", place.region).list_models(
                request={"parent": place.parent, "filter": f'labels.{MODEL_LABEL}="{digest}"'}, timeout=60))
        return found[0] if found else None

    def _undeploy_one(self, endpoint_name: str, deployed_id: str, place) -> None:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        endpoints = clouds.vertex_client("endpoint", place.region)
        current = self._get_endpoint(endpoint_name, place)
        model = next((d.model for d in current.deployed_models if d.id == deployed_id), None) if current else None
        with _errors(f"endpoint {endpoint_name}", "aiplatform.endpoints.undeploy", place):
            try:
                self._wait(endpoints.undeploy_model(endpoint=endpoint_name, deployed_model_id=deployed_id), f"UndeployModel {deployed_id}")
            except NotFoundError:
                pass
        if model:
            self._delete_model(model, place)

    def _delete_model(self, model: str, place) -> None:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        client = clouds.vertex_client("model", place.region)
        try:
            with _errors(f"model {model}", "aiplatform.models.delete", place):
                found = client.get_model(name=model, timeout=30)
                if ENDPOINT_LABEL in found.labels:  # ours only
                    self._wait(client.delete_model(name=model), f"DeleteModel {model}")
        except NotFoundError:
            pass

    # --- invoke ------------------------------------------------------------------------------------
    def invoke(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        from launcher import clouds

        place = self._serving_place()
        instance = {k: v for k, v in request.items() if k not in ("stream", "model")}
        parameters = {"adapter_id": request["model"]} if request.get("model") else None
        with self._invoke_errors(name, place):
            answer = clouds.vertex_client("prediction", place.region).predict(
                endpoint=f"{place.parent}/endpoints/{name}", instances=[instance], parameters=parameters, timeout=300)
        text = answer.predictions[0] if answer.predictions else ""
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": answer.deployed_model_id or name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": str(text)}, "finish_reason": "stop"}]}

    def invoke_stream(self, name: str, request: dict[str, Any]) -> Iterator[str]:
        """StreamRawPredict: the chat body goes to the container's predict route as is; its server-sent
        events come back as HttpBody messages."""
        from google.api import httpbody_pb2

        from launcher import clouds
        from launcher.backends.base import streamed_text

        place = self._serving_place()
        body = httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps({**request, "stream": True}).encode())
        with self._invoke_errors(name, place):
            answers = clouds.vertex_client("prediction", place.region).stream_raw_predict(
                request={"endpoint": f"{place.parent}/endpoints/{name}", "http_body": body}, timeout=300)
            yield from streamed_text((answer.data for answer in answers), name)

    @contextlib.contextmanager
    def _invoke_errors(self, name: str, place: Any) -> Iterator[None]:
        """PredictionService's answers in our words: a missing endpoint, the container's own 400."""
        from google.api_core import exceptions as api

        from launcher.backends.vertex import _errors

        try:
            with _errors(f"endpoint {name}", "aiplatform.endpoints.predict", place):
                try:
                    yield
                except (api.InvalidArgument, api.BadRequest) as exc:  # the container's 400, relayed by Vertex AI
                    raise UserInputError(f"endpoint '{name}' answered 400: {_container_message(exc.message)}") from None
        except NotFoundError:
            raise NotFoundError(f"no Vertex AI endpoint '{name}' in {place.parent}. To fix: run 'launcher endpoints --backend vertex'") from None

    # --- undeploy, list ----------------------------------------------------------------------------
    def undeploy(self, name: str) -> Endpoint:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        place = self._serving_place()
        endpoint_name = f"{place.parent}/endpoints/{name}"
        endpoint = self._get_endpoint(endpoint_name, place)
        if endpoint is None:
            raise NotFoundError(f"no Vertex AI endpoint '{name}' in {place.parent}. To fix: run 'launcher endpoints --backend vertex'")
        described = self._describe_endpoint(endpoint, place)
        for deployed in endpoint.deployed_models:
            self._undeploy_one(endpoint_name, deployed.id, place)
        with _errors(f"models in {place.parent}", "aiplatform.models.list", place):  # a refused deploy's Model, never deployed
            leftovers = [m.name for m in clouds.vertex_client("model", place.region).list_models(
                request={"parent": place.parent, "filter": f'labels.{ENDPOINT_LABEL}="{name}"'}, timeout=60)]
        for model in leftovers:
            self._delete_model(model, place)
        with _errors(f"endpoint {endpoint_name}", "aiplatform.endpoints.delete", place):
            self._wait(clouds.vertex_client("endpoint", place.region).delete_endpoint(name=endpoint_name), f"DeleteEndpoint {name}")
        described.state, described.message = "Stopped", "undeployed: models undeployed and deleted, endpoint deleted (capture and model files kept)"
        return described

    def endpoints(self) -> list[Endpoint]:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        if not self.configured():
            return []
        place = self._serving_place()
        with _errors(f"endpoints in {place.parent}", "aiplatform.endpoints.list", place):
            found = list(clouds.vertex_client("endpoint", place.region).list_endpoints(
                request={"parent": place.parent, "filter": f"labels.{ENDPOINT_LABEL}:*"}, timeout=60))
        described = [self._describe_endpoint(e, place) for e in found if ENDPOINT_LABEL in e.labels]
        return sorted(described, key=lambda e: e.created_at, reverse=True)

    def _describe_endpoint(self, endpoint: Any, place, reattached: bool = False) -> Endpoint:
        from launcher.backends.vertex import _iso

        name = endpoint.name.rsplit("/", 1)[-1]
        serving = [d for d in endpoint.deployed_models if endpoint.traffic_split.get(d.id)]
        capture = ""
        model_uri = ""
        if serving:
            model = self._model(serving[0].model, place)
            if model is not None:
                env = {e.name: e.value for e in model.container_spec.env}
                capture = f"{env['LAUNCHER_CAPTURE'].rstrip('/')}/{name}/" if env.get("LAUNCHER_CAPTURE") else ""
                model_uri = model.artifact_uri
        return Endpoint(
            name=name, backend=self.name, state="InService" if serving else "Creating",
            url=f"https://{place.region}-aiplatform.googleapis.com/v1/{endpoint.name}:predict", model=model_uri,
            created_at=_iso(endpoint.create_time), message="" if serving else "no model deployed", capture=capture,
            reattached=reattached,
            extra={"endpoint": endpoint.name, "deployed_models": [d.id for d in endpoint.deployed_models],
                   "console": f"https://console.cloud.google.com/vertex-ai/online-prediction/locations/{place.region}/endpoints/"
                              f"{name}?project={place.project}"},
        )

    def _model(self, name: str, place) -> Any | None:
        from launcher import clouds
        from launcher.backends.vertex import _errors

        try:
            with _errors(f"model {name}", "aiplatform.models.get", place):
                return clouds.vertex_client("model", place.region).get_model(name=name, timeout=30)
        except NotFoundError:
            return None


def _same_resources(a: Any, b: Any) -> bool:
    from google.cloud import aiplatform_v1 as v1

    return v1.DedicatedResources.serialize(a) == v1.DedicatedResources.serialize(b)


def _container_message(text: str) -> str:
    """The serving container's own error message out of the body Vertex AI relays."""
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return (text or "no message").strip().splitlines()[0][:300]


def _encryption(options: dict[str, Any]) -> Any:
    from google.cloud import aiplatform_v1 as v1

    return v1.EncryptionSpec(kms_key_name=options["kms_key_name"]) if options.get("kms_key_name") else None
