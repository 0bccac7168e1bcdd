"""launcher: validate, plan, train (LoRA/QLoRA), deploy and monitor domain-specialist LLMs.

``import launcher`` stays light: it loads neither torch nor a cloud SDK. Names are resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Job",
    "JobHandle",
    "JobInfo",
    "JobState",
    "attach",
    "launch",
    "deploy",
    "invoke",
    "undeploy",
    "endpoints",
    "Endpoint",
    "JobSpec",
    "TrainConfig",
    "LauncherError",
    "UserInputError",
]

_LAZY = {
    "Job": "launcher.api",
    "JobHandle": "launcher.api",
    "attach": "launcher.api",
    "launch": "launcher.api",
    "deploy": "launcher.api",
    "invoke": "launcher.api",
    "undeploy": "launcher.api",
    "endpoints": "launcher.api",
    "Endpoint": "launcher.backends.base",
    "JobInfo": "launcher.backends.base",
    "JobState": "launcher.backends.base",
    "JobSpec": "launcher.spec",
    "TrainConfig": "launcher.spec",
    "LauncherError": "launcher.errors",
    "UserInputError": "launcher.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from launcher.api import Job, JobHandle, attach, deploy, endpoints, invoke, launch, undeploy
    from launcher.backends.base import Endpoint, JobInfo, JobState
    from launcher.errors import LauncherError, UserInputError
    from launcher.spec import JobSpec, TrainConfig


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'launcher' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
