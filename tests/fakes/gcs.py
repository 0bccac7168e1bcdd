"""gcp-storage-emulator with Cloud Storage's write preconditions, for tests.

gcp-storage-emulator (2026.7.19) ignores ``ifGenerationMatch`` on an upload: a create-only write
(``if_generation_match=0``) of an object that exists replaces it instead of failing. Cloud Storage answers
412 Precondition Failed ("At least one of the pre-conditions you specified did not hold."), and launcher
relies on that (the Vertex backend's per-attempt claim). ``install()`` wraps the emulator's upload handler
(media and multipart uploads, what google-cloud-storage sends for small objects) so that the
precondition is checked and the object written under one lock: ``ifGenerationMatch=0`` means "does not
exist", ``N`` means "its generation is N". Resumable uploads, ``ifMetagenerationMatch`` and the
``ifGenerationNotMatch`` forms are not checked. The emulator also drops an upload's ``kmsKeyName``
(customer-managed encryption); ``kms_keys`` records it per ``(bucket, object)`` so a test can check that
an object was sent to be encrypted with the key it names (nothing is encrypted here).
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_lock = threading.Lock()
_original = objects.insert
kms_keys: dict[tuple[str, str], str] = {}  # (bucket, object) -> the kmsKeyName its last upload asked for


def _name(request: Any) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
    if request.query.get("kmsKeyName"):
        kms_keys[(request.params["bucket_name"], _name(request))] = request.query["kmsKeyName"][0]
    wanted = request.query.get("ifGenerationMatch")
    if not wanted or (request.query.get("uploadType") or [""])[0] == "resumable":
        return _original(request, response, storage, *args, **kwargs)
    with _lock:
        try:
            current = str(storage.get_file_obj(request.params["bucket_name"], _name(request))["generation"])
        except NotFound:
            current = "0"
        if current != wanted[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                                     "errors": [{"reason": "conditionNotMet", "location": "If-Match", "locationType": "header"}]}})
            return None
        return _original(request, response, storage, *args, **kwargs)


def install() -> None:
    """Check preconditions on uploads in every emulator server of this process (idempotent)."""
    objects.insert = insert  # the server's fallback path looks the handler up by name
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is _original:
                handlers[method] = insert
