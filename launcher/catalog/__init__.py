"""Data files about GPUs, instance types and prices (JSON, so loading them stays cheap)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load(name: str) -> dict[str, Any]:
    """Load ``launcher/catalog/<name>.json``."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


def gpu_kind(name: str) -> str | None:
    """The canonical GPU kind for ``name`` (case-insensitive, aliases allowed), or None."""
    kinds = load("gpus")["kinds"]
    wanted = name.strip().lower()
    for kind, info in kinds.items():
        if wanted == kind.lower() or wanted in info.get("aliases", []):
            return kind
    return None
