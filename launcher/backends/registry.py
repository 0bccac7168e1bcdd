"""Backends by name.

A backend is registered as a dotted path plus the extra that provides its SDK, so naming a backend
imports nothing until it is used, and a missing SDK fails with ``pip install "launcher[<extra>]"``
instead of an ImportError. Cloud backends are added here when their modules land.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from launcher.errors import MissingExtraError, UserInputError, did_you_mean

if TYPE_CHECKING:
    from launcher.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    path: str  # "module:Class"
    extra: str | None  # the pip extra that provides the SDK; None when the core install suffices
    requires: tuple[str, ...] = ()  # top-level modules the backend imports (checked before importing it)


BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry("launcher.backends.local:LocalBackend", None),
    "sagemaker": BackendEntry("launcher.backends.sagemaker:SageMakerBackend", "aws", ("boto3", "tenacity")),
    "vertex": BackendEntry("launcher.backends.vertex:VertexBackend", "gcp",
                           ("google.cloud.aiplatform_v1", "google.cloud.storage", "google.cloud.logging_v2", "tenacity")),
}


def register(name: str, path: str, extra: str | None = None, requires: tuple[str, ...] = ()) -> None:
    """Add (or replace) a backend under ``name``."""
    BACKENDS[name] = BackendEntry(path, extra, tuple(requires))


def names() -> list[str]:
    return list(BACKENDS)


def get(name: str) -> Backend:
    """A fresh instance of the backend called ``name``."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise UserInputError(
            f"unknown backend '{name}'.{did_you_mean(name, BACKENDS)} "
            f"Known backends: {', '.join(BACKENDS)}. To fix: pass one of them with --backend"
        )
    for module in entry.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(module, entry.extra or "dev", f"the '{name}' backend")
    module_name, _, class_name = entry.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # an SDK the backend imports at module level
        if exc.name and not exc.name.startswith("launcher") and entry.extra:
            raise MissingExtraError(exc.name, entry.extra, f"the '{name}' backend") from None
        raise
    return getattr(module, class_name)()
