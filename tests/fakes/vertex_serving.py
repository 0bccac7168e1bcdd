"""Vertex AI online prediction that really serves: ModelService, EndpointService and PredictionService for
``VertexFake`` (tests/fakes/vertex.py), which mixes this in and serves these methods on its one port.

* **ModelService**: UploadModel (an LRO, done at once, ``UploadModelResponse.model`` =
  ``projects/P/locations/L/models/<id>``; needs a display name, an ``artifact_uri`` and a
  ``container_spec.image_uri``), GetModel, ListModels (``filter``: ``labels.K="V"``, ``labels.K:*``,
  ``display_name="..."`` joined by AND; newest first), DeleteModel (an LRO; a model still deployed:
  FAILED_PRECONDITION, as Vertex refuses it).
* **EndpointService**: CreateEndpoint (an LRO, done at once; ``endpoint_id`` names it, else a numeric
  id; a name in use: ALREADY_EXISTS), GetEndpoint, ListEndpoints (the same filter), DeleteEndpoint (an
  LRO; an endpoint with models deployed: FAILED_PRECONDITION), **DeployModel**: an LRO that is *not*
  done when answered; a thread stands the container up as Vertex does: the Model's ``artifact_uri`` is
  downloaded from Cloud Storage (the emulator) into a local folder, and ``python -m entrypoints.serve``
  (the image is recorded, never pulled: this interpreter is the image) runs with the container spec's
  ``env`` and what Vertex sets: ``AIP_HTTP_PORT`` (a free port here, not the spec's 8080),
  ``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE`` (the spec's routes), ``AIP_STORAGE_URI`` (the local folder;
  on Vertex a ``gs://`` copy of the artifacts, which the entrypoint would download itself),
  ``AIP_DEPLOYED_MODEL_ID``, ``AIP_ENDPOINT_ID``, and ``LAUNCHER_SERVE_HOST=127.0.0.1`` in place of the
  container's 0.0.0.0. Once the health route answers 200 the model is in ``deployed_models`` with the
  traffic split asked for and the operation is done (``DeployModelResponse``); a container that dies or is
  not healthy within ``serve_ready_s`` ends the operation with FAILED_PRECONDITION "Model server exited
  unexpectedly" / "Model server never became ready" (Vertex's wording) and nothing is deployed.
  **UndeployModel**: an LRO; SIGTERM to the container (requests in flight finish, the capture flushes),
  then done. Traffic split entries must name deployed models (``"0"`` the one being deployed) and sum to
  100, else INVALID_ARGUMENT.
* **PredictionService.Predict** is forwarded over HTTP to the container of the deployed model holding the
  traffic: ``{"instances": [...], "parameters": {...}}`` (as JSON; ``google.protobuf.Value`` numbers are
  doubles, and whole ones are sent as integers, as Google's proto3 JSON printer writes them), and the
  answer's ``predictions`` come back in a ``PredictResponse`` (built, then ``.extend()``ed: proto-plus
  refuses them in the constructor) with ``deployed_model_id``. A container's 4xx is INVALID_ARGUMENT
  with its body, a 5xx INTERNAL; no deployed model: FAILED_PRECONDITION.
* **Refusals a test sets**: ``refuse_serving_quota(accelerator, limit)`` fails a DeployModel past it
  (its operation ends RESOURCE_EXHAUSTED, "The following quota metrics exceed quota limits:
  aiplatform.googleapis.com/custom_model_serving_nvidia_l4_gpus"); ``deny(permission)`` makes the methods
  needing it answer PERMISSION_DENIED ("Permission 'aiplatform.endpoints.deploy' denied on resource ...").
* **StreamRawPredict**: the request's HttpBody goes to the same container's predict route as is; the
  answer comes back as HttpBody messages, one per piece as it arrives (server-sent events stay whole
  only if a piece holds them: readers must buffer, as on Vertex AI).

Capture: the container writes it (``LAUNCHER_CAPTURE`` in the Model's env) to the emulator's ``gs://``
prefix itself, as it does on Vertex AI; nothing in the fake writes capture records.

Not emulated: dedicated resources (machine type and accelerator recorded; one container serves whatever
the replica counts), autoscaling, private and dedicated endpoints, traffic across several models
(Predict goes to the one with the most traffic), RawPredict and the other streaming methods, explanations,
model versions and the registry's aliases, Vertex's own request-response logging, IAM and service
accounts, and the wording of NOT_FOUND and the filter errors.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.cloud import aiplatform_v1
from google.api import httpbody_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format

from fakes.serving import ServingProcess, free_port

v1 = aiplatform_v1
ME = "the Vertex AI fake (tests/fakes/vertex_serving.py)"


@dataclass
class _Deployment:
    deployed_id: str
    model: str
    process: ServingProcess | None = None
    folder: Path | None = None


@dataclass
class _ServingState:
    models: dict[str, Any] = field(default_factory=dict)  # name -> v1.Model
    endpoints: dict[str, Any] = field(default_factory=dict)  # name -> v1.Endpoint
    deployments: dict[str, dict[str, _Deployment]] = field(default_factory=dict)  # endpoint -> deployed id -> deployment
    threads: list[threading.Thread] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    quotas: dict[str, int] = field(default_factory=dict)  # AcceleratorType name -> accelerators all deployments may hold
    denied: set[str] = field(default_factory=set)  # IAM permissions the caller lacks


# The permission each serving method needs (Vertex AI's access control page).
PERMISSIONS = {"UploadModel": "aiplatform.models.upload", "CreateEndpoint": "aiplatform.endpoints.create",
               "DeployModel": "aiplatform.endpoints.deploy", "Predict": "aiplatform.endpoints.predict",
               "StreamRawPredict": "aiplatform.endpoints.predict"}
DENIED = "Permission '{permission}' denied on resource '//aiplatform.googleapis.com/{resource}' (or it may not exist)."
SERVING_METRICS = {"NVIDIA_L4": "custom_model_serving_nvidia_l4_gpus", "NVIDIA_TESLA_T4": "custom_model_serving_nvidia_t4_gpus",
                   "NVIDIA_TESLA_A100": "custom_model_serving_nvidia_a100_gpus", "NVIDIA_H100_80GB": "custom_model_serving_nvidia_h100_gpus"}


def _plain(value: Any) -> Any:
    """JSON of a Value tree with whole doubles as integers (what Google's proto3 JSON printer writes)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class ServingServices:
    """Mixed into ``VertexFake``: ``_serving_handlers()`` maps method paths to handlers."""

    workdir: Path
    _lock: threading.RLock
    _operations: dict[str, operations_pb2.Operation]
    serve_ready_s: float = 180.0

    def _serving_init(self) -> None:
        self.serving = _ServingState()
        self._serving_ids = itertools.count(random.Random().randrange(10**9, 2 * 10**9))

    def _serving_handlers(self) -> dict[str, Any]:
        model, endpoint, prediction = ("/google.cloud.aiplatform.v1.ModelService/", "/google.cloud.aiplatform.v1.EndpointService/",
                                       "/google.cloud.aiplatform.v1.PredictionService/")
        return {
            model + "UploadModel": self._upload_model, model + "GetModel": self._get_model,
            model + "ListModels": self._list_models, model + "DeleteModel": self._delete_model,
            endpoint + "CreateEndpoint": self._create_endpoint, endpoint + "GetEndpoint": self._get_endpoint,
            endpoint + "ListEndpoints": self._list_endpoints, endpoint + "DeleteEndpoint": self._delete_endpoint,
            endpoint + "DeployModel": self._deploy_model, endpoint + "UndeployModel": self._undeploy_model,
            prediction + "Predict": self._predict, prediction + "StreamRawPredict": self._stream_raw_predict,
        }

    def refuse_serving_quota(self, accelerator: str, limit: int = 0) -> None:
        """Deployments may hold at most ``limit`` accelerators of this AcceleratorType name (min replicas x
        count): a DeployModel past it fails its operation with RESOURCE_EXHAUSTED, in Vertex AI's words."""
        self.serving.quotas[accelerator] = limit

    def deny(self, permission: str) -> None:
        """The caller lacks ``permission`` (e.g. aiplatform.endpoints.deploy): the methods needing it answer
        PERMISSION_DENIED, in Google's words."""
        self.serving.denied.add(permission)

    def _check_denied(self, method: str, resource: str, context) -> None:
        permission = PERMISSIONS[method]
        if permission in self.serving.denied:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED.format(permission=permission, resource=resource))

    def _serving_close(self) -> None:
        for deployments in self.serving.deployments.values():
            for deployment in deployments.values():
                if deployment.process is not None:
                    deployment.process.kill()
        for thread in self.serving.threads:
            thread.join(15)

    # --- operations --------------------------------------------------------------------------------
    def _operation(self, parent: str, metadata: Any, response: Any = None, done: bool = True) -> operations_pb2.Operation:
        operation = operations_pb2.Operation(name=f"{parent}/operations/{next(self._serving_ids)}", done=done)
        operation.metadata.Pack(type(metadata).pb(metadata))
        if done:
            operation.response.Pack(type(response).pb(response) if hasattr(type(response), "pb") else response)
        with self._lock:
            self._operations[operation.name] = operation
        return operation

    def _finish(self, operation: operations_pb2.Operation, response: Any = None, error: tuple[int, str] | None = None) -> None:
        done = operations_pb2.Operation()
        done.CopyFrom(operation)
        done.done = True
        if error:
            done.error.code, done.error.message = error
        else:
            done.response.Pack(type(response).pb(response) if hasattr(type(response), "pb") else response)
        with self._lock:
            self._operations[operation.name] = done

    @staticmethod
    def _generic() -> Any:
        from fakes.vertex import _now

        now = _now()
        return v1.GenericOperationMetadata(create_time=now, update_time=now)

    @staticmethod
    def _location(name: str, context) -> str:
        match = re.match(r"(projects/[^/]+/locations/[^/]+)", name)
        if match is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid resource name {name!r}.")
        return match[1]

    def _filtered(self, items: list[Any], text: str, context) -> list[Any]:
        from fakes.vertex import _compare, _parse_filter

        try:
            terms = _parse_filter(text, r"labels\.[\w.-]+|display_name")
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ME} does not understand the filter term {exc.args[0]!r}")
        out = []
        for item in items:
            ok = True
            for key, op, value in terms:
                if key.startswith("labels."):
                    label = item.labels.get(key.removeprefix("labels."))
                    ok = ok and (label is not None if op == ":" else _compare(label, op, value))
                else:
                    ok = ok and _compare(item.display_name, op, value)
            if ok:
                out.append(item)
        return out

    @staticmethod
    def _clone(message: Any) -> Any:
        return type(message).deserialize(type(message).serialize(message))

    # --- ModelService ------------------------------------------------------------------------------
    def _upload_model(self, request: Any, context) -> operations_pb2.Operation:
        from fakes.vertex import _now

        self.serving.calls.append(("UploadModel", request.model.display_name))
        self._check_denied("UploadModel", request.parent, context)
        parent = self._location(request.parent, context)
        model = self._clone(request.model)
        if not model.display_name or not model.artifact_uri or not model.container_spec.image_uri:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "display_name, artifact_uri and container_spec.image_uri must be set.")
        model.name = f"{parent}/models/{next(self._serving_ids)}"
        model.create_time = model.update_time = _now()
        with self._lock:
            self.serving.models[model.name] = model
        return self._operation(parent, v1.UploadModelOperationMetadata(generic_metadata=self._generic()),
                               v1.UploadModelResponse(model=model.name))

    def _model(self, name: str, context) -> Any:
        model = self.serving.models.get(name)
        if model is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"The Model {name} does not exist.")
        return model

    def _get_model(self, request: Any, context) -> Any:
        with self._lock:
            model = self._clone(self._model(request.name, context))
            model.deployed_models = [v1.DeployedModelRef(endpoint=e, deployed_model_id=d.deployed_id)
                                     for e, ds in self.serving.deployments.items() for d in ds.values() if d.model == request.name]
            return model

    def _list_models(self, request: Any, context) -> Any:
        with self._lock:
            found = [self._clone(m) for m in reversed(self.serving.models.values()) if m.name.startswith(request.parent + "/")]
        return v1.ListModelsResponse(models=self._filtered(found, request.filter, context))

    def _delete_model(self, request: Any, context) -> operations_pb2.Operation:
        self.serving.calls.append(("DeleteModel", request.name))
        with self._lock:
            self._model(request.name, context)
            if any(d.model == request.name for ds in self.serving.deployments.values() for d in ds.values()):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"The Model {request.name} is deployed to an Endpoint. Undeploy it first.")
            del self.serving.models[request.name]
        return self._operation(self._location(request.name, context), v1.DeleteOperationMetadata(generic_metadata=self._generic()),
                               empty_pb2.Empty())

    # --- EndpointService ---------------------------------------------------------------------------
    def _create_endpoint(self, request: Any, context) -> operations_pb2.Operation:
        from fakes.vertex import _now

        self.serving.calls.append(("CreateEndpoint", request.endpoint_id or request.endpoint.display_name))
        self._check_denied("CreateEndpoint", request.parent, context)
        parent = self._location(request.parent, context)
        endpoint = self._clone(request.endpoint)
        if not endpoint.display_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "display_name must be set.")
        endpoint.name = f"{parent}/endpoints/{request.endpoint_id or next(self._serving_ids)}"
        with self._lock:
            if endpoint.name in self.serving.endpoints:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Endpoint {endpoint.name} already exists.")
            endpoint.create_time = endpoint.update_time = _now()
            self.serving.endpoints[endpoint.name] = endpoint
            self.serving.deployments[endpoint.name] = {}
        return self._operation(parent, v1.CreateEndpointOperationMetadata(generic_metadata=self._generic()), self._clone(endpoint))

    def _endpoint(self, name: str, context) -> Any:
        endpoint = self.serving.endpoints.get(name)
        if endpoint is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"The Endpoint {name} does not exist.")
        return endpoint

    def _get_endpoint(self, request: Any, context) -> Any:
        with self._lock:
            return self._clone(self._endpoint(request.name, context))

    def _list_endpoints(self, request: Any, context) -> Any:
        with self._lock:
            found = [self._clone(e) for e in reversed(self.serving.endpoints.values()) if e.name.startswith(request.parent + "/")]
        return v1.ListEndpointsResponse(endpoints=self._filtered(found, request.filter, context))

    def _delete_endpoint(self, request: Any, context) -> operations_pb2.Operation:
        self.serving.calls.append(("DeleteEndpoint", request.name))
        with self._lock:
            endpoint = self._endpoint(request.name, context)
            if endpoint.deployed_models:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"The Endpoint {request.name} has deployed models. Undeploy them first.")
            del self.serving.endpoints[request.name]
            self.serving.deployments.pop(request.name, None)
        return self._operation(self._location(request.name, context), v1.DeleteOperationMetadata(generic_metadata=self._generic()),
                               empty_pb2.Empty())

    def _deploy_model(self, request: Any, context) -> operations_pb2.Operation:
        self.serving.calls.append(("DeployModel", request.endpoint))
        self._check_denied("DeployModel", request.endpoint, context)
        with self._lock:
            endpoint = self._endpoint(request.endpoint, context)
            model = self._clone(self._model(request.deployed_model.model, context))
            split = dict(request.traffic_split)
            known = {d.id for d in endpoint.deployed_models} | {"0"}
            if split and (sum(split.values()) != 100 or not set(split) <= known):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"traffic_split {split} must name deployed models (or '0') and sum to 100.")
            deployed_id = str(next(self._serving_ids))
        operation = self._operation(self._location(request.endpoint, context),
                                    v1.DeployModelOperationMetadata(generic_metadata=self._generic()), done=False)
        refused = self._over_serving_quota(request.deployed_model.dedicated_resources)
        if refused:
            self._finish(operation, error=(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], refused))
            return operation
        thread = threading.Thread(target=self._bring_up, args=(operation, request.endpoint, self._clone(request.deployed_model),
                                                                model, deployed_id, split), daemon=True)
        self.serving.threads.append(thread)
        thread.start()
        return operation

    def _over_serving_quota(self, resources: Any) -> str | None:
        """The quota message if these dedicated resources go past a quota a test set."""
        def held(r: Any, kind: str) -> int:
            return r.machine_spec.accelerator_count * max(1, r.min_replica_count) if r.machine_spec.accelerator_type.name == kind else 0

        kind = resources.machine_spec.accelerator_type.name
        if kind not in self.serving.quotas:
            return None
        with self._lock:
            used = sum(held(d.dedicated_resources, kind) for e in self.serving.endpoints.values() for d in e.deployed_models)
        if used + held(resources, kind) <= self.serving.quotas[kind]:
            return None
        metric = SERVING_METRICS.get(kind, f"custom_model_serving_{kind.lower()}_gpus")
        return f"The following quota metrics exceed quota limits: aiplatform.googleapis.com/{metric}"

    def _bring_up(self, operation, endpoint_name: str, deployed: Any, model: Any, deployed_id: str, split: dict) -> None:
        from fakes.vertex import _Mirror, _now

        try:
            folder = self.workdir / "endpoints" / endpoint_name.rsplit("/", 1)[-1] / deployed_id
            mirror = _Mirror(endpoint_name.split("/")[1], folder / "gcs")
            mirror.download(model.artifact_uri)
            bucket, _, prefix = model.artifact_uri.removeprefix("gs://").partition("/")
            storage = mirror.root / bucket / prefix.rstrip("/")
            spec = model.container_spec
            port = free_port()
            env = {**os.environ, **{e.name: e.value for e in spec.env}, "AIP_HTTP_PORT": str(port),
                   "AIP_HEALTH_ROUTE": spec.health_route or "/health", "AIP_PREDICT_ROUTE": spec.predict_route or "/predict",
                   "AIP_STORAGE_URI": str(storage), "AIP_DEPLOYED_MODEL_ID": deployed_id,
                   "AIP_ENDPOINT_ID": endpoint_name.rsplit("/", 1)[-1], "LAUNCHER_SERVE_HOST": "127.0.0.1"}
            process = ServingProcess([*spec.args], env, folder / "cwd", port, env["AIP_HEALTH_ROUTE"]).start()
            deployment = _Deployment(deployed_id, model.name, process, folder)
            why = process.wait_ready(self.serve_ready_s)
        except Exception as exc:  # the fake's own bug, or unreadable artifacts: a failed operation that says so
            return self._finish(operation, error=(13, f"{ME} failed: {type(exc).__name__}: {exc}"))
        if why:
            process.stop(5)
            text = "Model server exited unexpectedly." if "exited" in why else "Model server never became ready."
            tail = "\n".join(process.lines[-10:])
            return self._finish(operation, error=(9, f"{text} Model server logs can be found in Cloud Logging. {why}\n{tail}"))
        with self._lock:
            endpoint = self.serving.endpoints.get(endpoint_name)
            if endpoint is None:
                process.stop(5)
                return self._finish(operation, error=(5, f"The Endpoint {endpoint_name} does not exist."))
            self.serving.deployments[endpoint_name][deployed_id] = deployment
            deployed.id = deployed_id
            deployed.create_time = _now()
            endpoint.deployed_models.append(deployed)
            new_split = {("0" if k == "0" else k): v for k, v in split.items()} or {deployed_id: 100}
            endpoint.traffic_split.clear()
            for key, value in new_split.items():
                endpoint.traffic_split[deployed_id if key == "0" else key] = value
            endpoint.update_time = _now()
        self._finish(operation, v1.DeployModelResponse(deployed_model=deployed))

    def _undeploy_model(self, request: Any, context) -> operations_pb2.Operation:
        from fakes.vertex import _now

        self.serving.calls.append(("UndeployModel", request.deployed_model_id))
        with self._lock:
            endpoint = self._endpoint(request.endpoint, context)
            deployment = self.serving.deployments[request.endpoint].pop(request.deployed_model_id, None)
            if deployment is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Deployed model {request.deployed_model_id} does not exist on {request.endpoint}.")
            kept = [d for d in endpoint.deployed_models if d.id != request.deployed_model_id]
            del endpoint.deployed_models[:]
            endpoint.deployed_models.extend(kept)
            split = {k: v for k, v in endpoint.traffic_split.items() if k != request.deployed_model_id}
            endpoint.traffic_split.clear()
            endpoint.traffic_split.update(split)
            endpoint.update_time = _now()
        operation = self._operation(self._location(request.endpoint, context),
                                    v1.UndeployModelOperationMetadata(generic_metadata=self._generic()), done=False)

        def stop() -> None:
            if deployment.process is not None:
                deployment.process.stop()  # SIGTERM: requests in flight finish, the capture flushes
            self._finish(operation, v1.UndeployModelResponse())

        thread = threading.Thread(target=stop, daemon=True)
        self.serving.threads.append(thread)
        thread.start()
        return operation

    # --- PredictionService -------------------------------------------------------------------------
    def _serving(self, name: str, context) -> _Deployment:
        """The deployment that takes the endpoint's traffic (the one with the most of the split)."""
        with self._lock:
            endpoint = self._endpoint(name, context)
            split = dict(endpoint.traffic_split)
            deployments = self.serving.deployments.get(name, {})
            target = max(split, key=split.get) if split else None
            deployment = deployments.get(target) if target else None
        if deployment is None or deployment.process is None or not deployment.process.alive():
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"The Endpoint {name} has no deployed model serving traffic.")
        return deployment

    def _stream_raw_predict(self, request: Any, context) -> Any:
        """The HttpBody to the container's predict route as is; its answer back piece by piece."""
        self._check_denied("StreamRawPredict", request.endpoint, context)
        deployment = self._serving(request.endpoint, context)
        http = urllib.request.Request(deployment.process.url + deployment.process.env["AIP_PREDICT_ROUTE"], data=request.http_body.data,
                                      headers={"Content-Type": request.http_body.content_type or "application/json"}, method="POST")
        try:
            answer = urllib.request.urlopen(http, timeout=120)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if exc.code < 500 else grpc.StatusCode.INTERNAL, text)
        with answer:
            content_type = answer.headers.get("Content-Type", "application/json")
            while piece := answer.read1(65536):
                yield httpbody_pb2.HttpBody(content_type=content_type, data=piece)

    def _predict(self, request: Any, context) -> Any:
        self._check_denied("Predict", request.endpoint, context)
        deployment = self._serving(request.endpoint, context)
        message = json_format.MessageToDict(v1.PredictRequest.pb(request))
        body = {"instances": _plain(message.get("instances", []))}
        if "parameters" in message:
            body["parameters"] = _plain(message["parameters"])
        route = deployment.process.env["AIP_PREDICT_ROUTE"]
        http = urllib.request.Request(deployment.process.url + route, data=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(http, timeout=120) as answer:
                predictions = json.loads(answer.read())["predictions"]
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if exc.code < 500 else grpc.StatusCode.INTERNAL, text)
        response = v1.PredictResponse(deployed_model_id=deployment.deployed_id)
        response.predictions.extend(predictions)
        with contextlib.suppress(Exception):
            response.model = deployment.model
        return response
