"""The serving contract, checked on this machine before a cloud endpoint is created.

A SageMaker or Vertex AI endpoint takes minutes to come up and bills from the first one; a model the
serving container cannot load fails only at the end of them, with the reason in the cloud's logs. So a
cloud ``deploy`` first runs ``python -m entrypoints.serve`` (the code the serving image runs) on the
model dir here, with the platform's environment (SageMaker: ``SAGEMAKER_BIND_TO_PORT``; Vertex AI:
``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE``), waits for the health route to answer
200, sends one invocation in the platform's own shape (``/invocations`` with ``messages``; the predict
route with ``instances``) and stops the server. A failure raises ``BackendError`` with the server's last
log lines, before anything is uploaded or created. ``--no-local-check`` skips it for an image that
cannot run here (AWS's LMI/vLLM images, a GPU-only engine).

The server binds 127.0.0.1 without capture and without the API key; the deadline is
``LAUNCHER_LOCAL_CHECK_TIMEOUT`` (default 300 s: a cold start imports torch and loads the base model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from launcher.errors import BackendError

DEFAULT_TIMEOUT = 300.0
HEALTH_ROUTE, PREDICT_ROUTE = "/health", "/predict"  # what the Vertex AI model's container spec names
PROBE = [{"role": "user", "content": "Say OK."}]


def checked_options(options: dict[str, Any], known: dict[str, str], cloud: str, whole_numbers: tuple[str, ...]) -> dict[str, Any]:
    """A deploy's ``--option`` keys checked before anything is made: an unknown key, or a count that is
    not a whole number of at least 1, is one line, exit 2. The counts come back as ints."""
    from launcher.errors import UserInputError, did_you_mean

    for key in options:
        if key not in known:
            raise UserInputError(f"--option {key} is not a {cloud} deploy setting.{did_you_mean(key, known)} "
                                 f"To fix: use one of {', '.join(known)}")
    found = dict(options)
    for key in whole_numbers:
        if key in found:
            try:
                found[key] = int(found[key])
            except ValueError:
                raise UserInputError(f"--option {key}={found[key]} is not a whole number. To fix: e.g. {key}=1") from None
            if found[key] < 1:
                raise UserInputError(f"--option {key}={found[key]} must be at least 1. To fix: e.g. {key}=1")
    return found


def serving_compute(options: dict[str, Any], default: str, example: str) -> Any:
    """The ``ComputeSpec`` of ``--option accelerator`` (or ``default``); a bad value is one line naming the
    GPU kinds there are."""
    from pydantic import ValidationError

    from launcher.errors import UserInputError
    from launcher.spec import ComputeSpec

    try:
        return ComputeSpec.model_validate({"accelerator": options.get("accelerator") or default})
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise UserInputError(f"--option accelerator={options.get('accelerator')} is not a GPU kind and count ({why}). "
                             f"To fix: e.g. {example}") from None


def short_digest(*parts: Any) -> str:
    """Nine hex digits naming what a cloud resource holds (its bodies as JSON): the same content, the same name."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:9]


def platform_env(platform: str, port: int) -> dict[str, str]:
    """What the platform sets in the serving container (the port is the one chosen here)."""
    if platform == "sagemaker":
        return {"SAGEMAKER_BIND_TO_PORT": str(port)}
    return {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": HEALTH_ROUTE, "AIP_PREDICT_ROUTE": PREDICT_ROUTE}


def check_contract(model: Path, platform: str, name: str, *, max_new_tokens_cap: int = 1024) -> None:
    """Serve ``model`` here as ``platform`` would run it, ask it once, stop it; BackendError (with the
    server's last log lines as ``details``) when any step fails."""
    from launcher.backends._local_serving import _free_port, _tail

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LAUNCHER_API_KEY", "LAUNCHER_CAPTURE", "AIP_STORAGE_URI")}
    env |= {"PYTHONUNBUFFERED": "1", **platform_env(platform, port)}
    command = [sys.executable, "-m", "entrypoints.serve", "--model", str(model), "--host", "127.0.0.1",
               "--endpoint-name", name, "--max-new-tokens-cap", str(max_new_tokens_cap)]
    health = "/ping" if platform == "sagemaker" else HEALTH_ROUTE
    deadline = time.monotonic() + float(os.environ.get("LAUNCHER_LOCAL_CHECK_TIMEOUT", DEFAULT_TIMEOUT))
    with tempfile.TemporaryDirectory(prefix="launcher-check-") as scratch:
        log_path = Path(scratch) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=scratch, env=env,
                                       start_new_session=True)
        why = ""
        try:
            while not why:
                if _get(f"http://127.0.0.1:{port}{health}") == 200:
                    break
                if process.poll() is not None:
                    why = f"the server exited with status {process.returncode} before it was ready"
                elif time.monotonic() > deadline:
                    why = "the server was not ready before the deadline (LAUNCHER_LOCAL_CHECK_TIMEOUT)"
                else:
                    time.sleep(0.25)
            if not why:
                why = _invoke_once(platform, port)
        finally:
            _stop(process)
        if why:
            error = BackendError(
                f"the serving contract check of {model} for {platform} failed: {why}; nothing was created on {platform}. "
                "To fix: read the server's log lines above, fix the model (or the serving code), then deploy again "
                "(--no-local-check skips this check for an image that cannot run here)")
            error.details = tuple(_tail(log_path, 15))
            raise error


def _invoke_once(platform: str, port: int) -> str:
    """One request in the platform's shape; '' when the answer has the contract's shape, else why not."""
    if platform == "sagemaker":
        route, body = "/invocations", {"messages": PROBE, "max_tokens": 2}
    else:
        route, body = PREDICT_ROUTE, {"instances": [{"messages": PROBE, "max_tokens": 2}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            data = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return f"POST {route} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"POST {route} failed: {exc}"
    if platform == "sagemaker" and not (isinstance(data, dict) and data.get("choices")):
        return f"POST {route} answered without 'choices': {str(data)[:200]}"
    if platform == "vertex" and not (isinstance(data, dict) and isinstance(data.get("predictions"), list)
                                     and len(data["predictions"]) == 1):
        return f"POST {route} answered without one prediction: {str(data)[:200]}"
    return ""


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
