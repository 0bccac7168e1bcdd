"""Serve a Google API from its own client library: the method table of a gRPC fake, learnt, not written.

Google ships no servicer stubs for most of its APIs (aiplatform, Pub/Sub's are not public either). The
client's ``<Service>GrpcTransport`` knows every method: each of its stub properties asks the channel for a
stub naming the method's path and its request and response classes. ``methods`` hands a transport a
recording channel and touches every property; ``generic_handlers`` serves the learnt table through
``grpc.method_handlers_generic_handler``, a behaviour per implemented path and an UNIMPLEMENTED answer for
the rest. Used by tests/fakes/vertex.py and tests/fakes/pubsub.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.auth.credentials import AnonymousCredentials


class RecordingChannel(grpc.Channel):
    """A channel that only records the stubs a transport makes: path -> (kind, serializer, deserializer)."""

    def __init__(self):
        self.methods: dict[str, tuple[str, Any, Any]] = {}

    def _stub(kind):  # noqa: N805 - a factory of the four stub makers
        def make(self, path, request_serializer=None, response_deserializer=None, *_, **__):
            self.methods[path] = (kind, request_serializer, response_deserializer)
            return lambda *a, **k: None
        return make

    unary_unary, unary_stream = _stub("unary_unary"), _stub("unary_stream")
    stream_unary, stream_stream = _stub("stream_unary"), _stub("stream_stream")

    def subscribe(self, *_, **__): ...
    def unsubscribe(self, *_, **__): ...
    def close(self): ...


def methods(transport_class: type) -> dict[str, tuple[str, Any, Any]]:
    """Every method a client transport can call, learnt by touching each of its stub properties."""
    channel = RecordingChannel()
    transport = transport_class(channel=channel, credentials=AnonymousCredentials())
    transport._logged_channel, transport._stubs = channel, {}  # the real one wraps stubs lazily
    for name in dir(transport_class):
        if isinstance(getattr(transport_class, name), property) and name not in ("grpc_channel", "kind", "operations_client"):
            getattr(transport, name)
    return channel.methods


def codec(function: Any, direction: str) -> Any:
    """The (de)serializer for a stub's message class: proto-plus or plain protobuf; None (bytes) if unknown."""
    cls = getattr(function, "__self__", None)
    if not isinstance(cls, type):
        return None
    if hasattr(cls, "meta"):  # proto-plus
        return cls.deserialize if direction == "in" else cls.serialize
    return cls.FromString if direction == "in" else (lambda message: message.SerializeToString())


def generic_handlers(transports: Iterable[type], implemented: dict[str, Callable], me: str,
                     skip: Iterable[str] = ()) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service the transports talk to: ``implemented[path]`` where given, else an
    UNIMPLEMENTED answer naming ``me`` (the fake). Services in ``skip`` are left to a real servicer."""
    services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for transport in transports:
        for path, (kind, serializer, deserializer) in methods(transport).items():
            service, method = path.strip("/").split("/")
            if service in skip:
                continue
            make = getattr(grpc, f"{kind}_rpc_method_handler")
            behaviour = implemented.get(path) or _unimplemented(service, method, kind, me)
            services.setdefault(service, {})[method] = make(
                behaviour, request_deserializer=codec(serializer, "in"), response_serializer=codec(deserializer, "out"))
    return [grpc.method_handlers_generic_handler(service, handlers) for service, handlers in services.items()]


def _unimplemented(service: str, method: str, kind: str, me: str) -> Callable:
    def answer(request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{service}.{method} is not implemented by {me}")
    if kind.endswith("stream"):  # a streaming response: a generator that aborts
        return lambda request, context: (x for x in [answer(request, context)])
    return answer
