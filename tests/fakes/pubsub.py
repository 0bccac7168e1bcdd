"""Pub/Sub on a plaintext gRPC port, enough for the real PublisherClient and SubscriberClient to talk to.

The Pub/Sub emulator (a Java program in the gcloud SDK) cannot be installed here. google-cloud-pubsub
itself opens a plaintext channel with anonymous credentials when ``PUBSUB_EMULATOR_HOST=host:port`` is
set, so ``PubSubFake`` serves the methods learnt from the client's own ``PublisherGrpcTransport`` and
``SubscriberGrpcTransport`` (tests/fakes/grpc_learnt.py, as tests/fakes/vertex.py does) with the
library's proto-plus classes:

* **Publisher.CreateTopic** (a name ``projects/P/topics/T``, T 3-255 characters from a letter, not
  ``goog``: otherwise INVALID_ARGUMENT; a second create ALREADY_EXISTS), **GetTopic** (NOT_FOUND),
  **Publish** (NOT_FOUND for a topic that does not exist; a message with neither data nor attributes
  INVALID_ARGUMENT; each message gets a ``message_id`` and ``publish_time`` and is copied to every
  subscription the topic has at that moment; answers the ids in order).
* **Subscriber.CreateSubscription** (NOT_FOUND for its topic, ALREADY_EXISTS; ``ack_deadline_seconds``
  default 10), **Pull** (``max_messages`` > 0; answers at once with up to that many messages not acked
  and not leased, each leased for the ack deadline and handed out again after it), **Acknowledge**.
* ``deny(permission)`` (``pubsub.topics.publish``, ``pubsub.topics.create``, ...): the methods needing
  it answer PERMISSION_DENIED "User not authorized to perform this action." (Pub/Sub's words).

Every other method (StreamingPull, seeks, snapshots, IAM, ...) answers UNIMPLEMENTED naming this file.
Not emulated: ordering keys (accepted, not enforced), message retention, dead-letter policies, filters,
push subscriptions, exactly-once delivery settings. The wording of INVALID_ARGUMENT answers is the
fake's own; NOT_FOUND and ALREADY_EXISTS follow Pub/Sub's ("Resource not found (resource=T).").

Control API: ``start``, ``close`` (or ``with PubSubFake() as fake``), ``deny``, ``published(topic)`` (every message a topic received).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from fakes.grpc_learnt import generic_handlers

ME = "the Pub/Sub fake (tests/fakes/pubsub.py)"
TOPIC = re.compile(r"projects/[^/]+/topics/(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
SUBSCRIPTION = re.compile(r"projects/[^/]+/subscriptions/(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
PERMISSIONS = {"CreateTopic": "pubsub.topics.create", "GetTopic": "pubsub.topics.get", "Publish": "pubsub.topics.publish",
               "CreateSubscription": "pubsub.subscriptions.create", "Pull": "pubsub.subscriptions.consume",
               "Acknowledge": "pubsub.subscriptions.consume"}


@dataclass
class _Subscription:
    resource: types.Subscription
    queue: dict[str, types.PubsubMessage] = field(default_factory=dict)  # ack id -> message, in arrival order
    leased_until: dict[str, float] = field(default_factory=dict)  # ack id -> monotonic deadline


class PubSubFake:
    def __init__(self):
        self._lock = threading.Lock()
        self._topics: dict[str, types.Topic] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._published: dict[str, list[types.PubsubMessage]] = {}
        self._ids = itertools.count(1)
        self._denied: set[str] = set()
        self._server: grpc.Server | None = None
        self.address = ""

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:``port`` (0: a free one); returns ``host:port`` for PUBSUB_EMULATOR_HOST."""
        publisher, subscriber = "/google.pubsub.v1.Publisher/", "/google.pubsub.v1.Subscriber/"
        implemented = {
            publisher + "CreateTopic": self._create_topic, publisher + "GetTopic": self._get_topic,
            publisher + "Publish": self._publish, subscriber + "CreateSubscription": self._create_subscription,
            subscriber + "Pull": self._pull, subscriber + "Acknowledge": self._acknowledge,
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers(generic_handlers((PublisherGrpcTransport, SubscriberGrpcTransport), implemented, ME))
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        self.address = f"127.0.0.1:{bound}"
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(None)

    def __enter__(self) -> PubSubFake:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deny(self, permission: str) -> None:
        """The caller lacks ``permission``: the methods needing it answer PERMISSION_DENIED."""
        self._denied.add(permission)

    def published(self, topic: str) -> list[types.PubsubMessage]:
        """Every message ``topic`` received, in order."""
        with self._lock:
            return list(self._published.get(topic, []))

    # --- Publisher --------------------------------------------------------------------------------
    def _check(self, method: str, context) -> None:
        if PERMISSIONS[method] in self._denied:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "User not authorized to perform this action.")

    def _create_topic(self, request: types.Topic, context) -> types.Topic:
        self._check("CreateTopic", context)
        if not TOPIC.fullmatch(request.name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [topics] name: (name={request.name})")
        with self._lock:
            if request.name in self._topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource already exists in the project (resource={_short(request.name)}).")
            self._topics[request.name] = types.Topic(name=request.name, labels=dict(request.labels))
            self._published[request.name] = []
            return self._topics[request.name]

    def _get_topic(self, request: types.GetTopicRequest, context) -> types.Topic:
        self._check("GetTopic", context)
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={_short(request.topic)}).")
            return self._topics[request.topic]

    def _publish(self, request: types.PublishRequest, context) -> types.PublishResponse:
        self._check("Publish", context)
        if any(not message.data and not message.attributes for message in request.messages):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ME}: a message needs data or at least one attribute.")
        response = types.PublishResponse()
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={_short(request.topic)}).")
            for sent in request.messages:
                message = types.PubsubMessage(data=sent.data, attributes=dict(sent.attributes), ordering_key=sent.ordering_key,
                                              message_id=str(next(self._ids)), publish_time=dt.datetime.now(dt.timezone.utc))
                self._published[request.topic].append(message)
                for subscription in self._subscriptions.values():
                    if subscription.resource.topic == request.topic:
                        subscription.queue[f"ack-{next(self._ids)}"] = message
                response.message_ids.append(message.message_id)
        return response

    # --- Subscriber -------------------------------------------------------------------------------
    def _create_subscription(self, request: types.Subscription, context) -> types.Subscription:
        self._check("CreateSubscription", context)
        if not SUBSCRIPTION.fullmatch(request.name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [subscriptions] name: (name={request.name})")
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={_short(request.topic)}).")
            if request.name in self._subscriptions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource already exists in the project (resource={_short(request.name)}).")
            resource = types.Subscription(name=request.name, topic=request.topic,
                                          ack_deadline_seconds=request.ack_deadline_seconds or 10)
            self._subscriptions[request.name] = _Subscription(resource)
            return resource

    def _subscription(self, name: str, context) -> _Subscription:
        if name not in self._subscriptions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={_short(name)}).")
        return self._subscriptions[name]

    def _pull(self, request: types.PullRequest, context) -> types.PullResponse:
        self._check("Pull", context)
        if request.max_messages <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ME}: max_messages must be greater than 0.")
        response = types.PullResponse()
        now = time.monotonic()
        with self._lock:
            subscription = self._subscription(request.subscription, context)
            for ack_id, message in subscription.queue.items():
                if len(response.received_messages) == request.max_messages:
                    break
                if subscription.leased_until.get(ack_id, 0) <= now:
                    subscription.leased_until[ack_id] = now + subscription.resource.ack_deadline_seconds
                    response.received_messages.append(types.ReceivedMessage(ack_id=ack_id, message=message))
        return response

    def _acknowledge(self, request: types.AcknowledgeRequest, context) -> empty_pb2.Empty:
        self._check("Acknowledge", context)
        with self._lock:
            subscription = self._subscription(request.subscription, context)
            for ack_id in request.ack_ids:
                subscription.queue.pop(ack_id, None)
                subscription.leased_until.pop(ack_id, None)
        return empty_pb2.Empty()


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]
