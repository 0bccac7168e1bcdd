"""The local backend's serving group: an endpoint is ``entrypoints.serve`` as a detached process on 127.0.0.1.

Each endpoint lives in ``$LAUNCHER_HOME/endpoints/<name>/``: ``state.json`` (written atomically: the
model, URL, port, capture folder, state), ``logs.txt`` (the server's stdout and stderr), ``capture/``
(its capture records, SageMaker's layout) and ``run.lock``.

The pattern is the training jobs' (``local.py``): **liveness is a lock**. ``deploy`` takes an exclusive
flock on ``run.lock`` and hands the descriptor to the server process (started in a new session, so
closing the terminal leaves it serving), which holds it exactly as long as it lives. ``deploy`` then
waits for ``/ping`` to answer 200 (the server's first one-token generation succeeded) until a deadline
(``LAUNCHER_DEPLOY_TIMEOUT``, default 180 s); a server that dies or never becomes ready is stopped and
its last log lines are shown. Deploying a name that is alive with the same model re-attaches.
``undeploy`` sends SIGTERM to the server's process group (uvicorn lets requests in flight finish, then
the capture is flushed) and SIGKILL after ``LAUNCHER_UNDEPLOY_GRACE`` seconds (default 30). The API key,
when there is one, reaches the server through its environment, never its command line or state.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.backends.base import Endpoint, EndpointSpec, streamed_text
from launcher.errors import BackendError, NotFoundError, UserInputError
from launcher.state import file_lock, read_json, write_json

SERVE_ENTRYPOINT = "entrypoints.serve"
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
DEFAULT_DEPLOY_TIMEOUT = 180.0
DEFAULT_UNDEPLOY_GRACE = 30.0


def endpoint_name(text: str) -> str:
    """A valid endpoint name made from a job id or folder name (lower case, dashes, at most 63 characters)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "endpoint"


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserInputError(f"endpoint name '{name}' is not valid. To fix: use lower-case letters, digits and dashes "
                             "(at most 63, starting with a letter or digit), e.g. --name claims-v1")


class LocalServing:
    """Mixed into ``LocalBackend``: ``deploy``, ``invoke``, ``invoke_stream``, ``undeploy``, ``endpoints``."""

    root: Path
    name: str

    @property
    def endpoints_dir(self) -> Path:
        return self.root / "endpoints"

    def _endpoint_dir(self, name: str) -> Path:
        return self.endpoints_dir / name

    def _known(self, name: str) -> Path:
        folder = self._endpoint_dir(name)
        if not (folder / "state.json").is_file():
            from launcher.errors import did_you_mean

            names = [p.name for p in self.endpoints_dir.iterdir()] if self.endpoints_dir.is_dir() else []
            raise NotFoundError(f"no local endpoint '{name}' under {self.endpoints_dir}.{did_you_mean(name, names)} "
                                "To fix: run 'launcher endpoints' to see them")
        return folder

    # --- deploy ------------------------------------------------------------------------------------
    def deploy(self, model: Path, spec: EndpointSpec) -> Endpoint:
        from launcher.backends.local import _lock_held, _take_run_lock, now

        check_name(spec.name)
        model = Path(model).absolute()
        adapters = {name: str(Path(path).absolute()) for name, path in spec.adapters.items()}
        folder = self._endpoint_dir(spec.name)
        with file_lock(self.root / "locks" / f"endpoint-{spec.name}.lock"):
            if _lock_held(folder):
                state = read_json(folder / "state.json")
                if state.get("model") == str(model) and state.get("adapters", {}) == adapters:
                    self._wait_ready(folder, state)
                    return self._describe(folder, reattached=True)
                raise UserInputError(f"endpoint '{spec.name}' is already serving {state.get('model')}. To fix: "
                                     f"'launcher undeploy {spec.name}' first, or deploy under another --name")
            port = spec.port or _free_port()
            if spec.port and not _port_free(spec.port):
                raise UserInputError(f"port {spec.port} on 127.0.0.1 is in use. To fix: pass another --port, or leave it out to pick a free one")
            lock = _take_run_lock(folder)
            if lock is None:
                raise BackendError(f"endpoint '{spec.name}' is starting in another process. To fix: run the command again")
            try:
                capture = spec.capture or str(folder / "capture")
                command = [sys.executable, "-m", SERVE_ENTRYPOINT, "--model", str(model), "--host", "127.0.0.1",
                           "--port", str(port), "--capture", capture, "--capture-percent", f"{spec.capture_percent:g}",
                           "--endpoint-name", spec.name, "--max-new-tokens-cap", str(spec.max_new_tokens_cap)]
                for name, path in adapters.items():
                    command += ["--adapter", f"{name}={path}"]
                for key, value in spec.options.items():  # server settings: threads, max_concurrency, request_timeout, ...
                    command += [f"--{key.replace('_', '-')}", str(value)]
                env = {k: v for k, v in os.environ.items() if k not in ("LAUNCHER_API_KEY", spec.api_key_env)}
                key = os.environ.get(spec.api_key_env)
                if key:
                    env["LAUNCHER_API_KEY"] = key
                env["PYTHONUNBUFFERED"] = "1"
                state = {"name": spec.name, "state": "Creating", "model": str(model), "adapters": adapters,
                         "url": f"http://127.0.0.1:{port}", "port": port, "capture": capture, "auth": bool(key),
                         "api_key_env": spec.api_key_env, "log": str(folder / "logs.txt"), "created_at": now(),
                         "created_ts": time.time(), "command": command, "source": spec.source,
                         "models": ([_served_name(model)] if (model / "adapter_config.json").is_file() else []) + list(adapters)}
                write_json(folder / "state.json", state)
                with open(folder / "logs.txt", "ab") as log:
                    log.write(f"=== launcher: endpoint {spec.name} starting {now()} ===\n".encode())
                    log.flush()
                    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder,
                                               env=env, pass_fds=(lock,), start_new_session=True)
                state.update(pid=process.pid, pgid=process.pid)
                write_json(folder / "state.json", state)
            finally:
                os.close(lock)  # the server holds it now
        self._wait_ready(folder, state)
        return self._describe(folder)

    def _wait_ready(self, folder: Path, state: dict[str, Any]) -> None:
        from launcher.backends.local import _lock_held, now

        deadline = time.monotonic() + float(os.environ.get("LAUNCHER_DEPLOY_TIMEOUT", DEFAULT_DEPLOY_TIMEOUT))
        while True:
            if _ping(state["url"]):
                if state.get("state") != "InService":
                    state.update(state="InService", ready_at=now())
                    write_json(folder / "state.json", state)
                return
            alive = _lock_held(folder)
            if not alive or time.monotonic() > deadline:
                if alive:
                    _stop(folder, state, grace_s=5)
                why = "the server process ended" if not alive else "the server was not ready before the deadline (LAUNCHER_DEPLOY_TIMEOUT)"
                state.update(state="Failed", message=why, ended_at=now())
                write_json(folder / "state.json", state)
                tail = _tail(folder / "logs.txt", 15)
                error = BackendError(f"endpoint '{state['name']}' did not start: {why}. To fix: read the log lines above "
                                     f"({folder / 'logs.txt'}), then deploy again")
                error.details = tuple(tail)
                raise error
            time.sleep(0.25)

    # --- invoke ------------------------------------------------------------------------------------
    def _live(self, name: str) -> dict[str, Any]:
        from launcher.backends.local import _lock_held

        folder = self._known(name)
        state = read_json(folder / "state.json")
        if not _lock_held(folder):
            raise UserInputError(f"endpoint '{name}' is not running ({self._describe(folder).state}). To fix: deploy it again")
        return state

    def _post(self, state: dict[str, Any], request: dict[str, Any], stream: bool) -> Any:
        body = json.dumps({**request, "stream": stream}).encode()
        headers = {"Content-Type": "application/json"}
        if state.get("auth"):
            key = os.environ.get(state.get("api_key_env") or "LAUNCHER_API_KEY")
            if not key:
                raise UserInputError(f"endpoint '{state['name']}' needs its API key. To fix: set {state.get('api_key_env')} "
                                     "to the key it was deployed with")
            headers["Authorization"] = f"Bearer {key}"
        http = urllib.request.Request(state["url"] + "/v1/chat/completions", data=body, headers=headers, method="POST")
        try:
            return urllib.request.urlopen(http, timeout=float(os.environ.get("LAUNCHER_INVOKE_TIMEOUT", 300)))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            cls = UserInputError if 400 <= exc.code < 500 else BackendError
            raise cls(f"endpoint '{state['name']}' answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"cannot reach endpoint '{state['name']}' at {state['url']}: {exc}. To fix: "
                               f"'launcher endpoints' shows its state; deploy it again if it stopped") from None

    def invoke(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._post(self._live(name), request, stream=False) as answer:
            return json.loads(answer.read())

    def invoke_stream(self, name: str, request: dict[str, Any]) -> Iterator[str]:
        with self._post(self._live(name), request, stream=True) as answer:
            yield from streamed_text(answer, name)

    # --- undeploy, list ----------------------------------------------------------------------------
    def undeploy(self, name: str) -> Endpoint:
        from launcher.backends.local import _lock_held, now

        folder = self._known(name)
        with file_lock(self.root / "locks" / f"endpoint-{name}.lock"):
            state = read_json(folder / "state.json")
            if _lock_held(folder):
                grace = float(os.environ.get("LAUNCHER_UNDEPLOY_GRACE", DEFAULT_UNDEPLOY_GRACE))
                _stop(folder, state, grace)
            state.update(state="Stopped", stopped_at=now(), message="undeployed")
            write_json(folder / "state.json", state)
        return self._describe(folder)

    def endpoints(self) -> list[Endpoint]:
        if not self.endpoints_dir.is_dir():
            return []
        found = [self._describe(f) for f in self.endpoints_dir.iterdir() if (f / "state.json").is_file()]
        return sorted(found, key=lambda e: e.created_at, reverse=True)

    def _describe(self, folder: Path, reattached: bool = False) -> Endpoint:
        from launcher.backends.local import _lock_held

        state = read_json(folder / "state.json")
        value, message = state.get("state", "Creating"), state.get("message", "")
        if value in ("Creating", "InService") and not _lock_held(folder):
            value, message = "Failed", "the server process ended without an undeploy (killed, or the machine restarted). To fix: deploy it again"
        return Endpoint(
            name=state.get("name", folder.name), backend=self.name, state=value, url=state.get("url", ""),
            model=state.get("model", ""), models=list(state.get("models", [])), created_at=state.get("created_at", ""), message=message,
            capture=state.get("capture", ""), auth=bool(state.get("auth")), reattached=reattached,
            extra={"port": state.get("port"), "pid": state.get("pid"), "logs": state.get("log", ""),
                   "endpoint_dir": str(folder), **({"source": state["source"]} if state.get("source") else {})},
        )


def _served_name(model: Path) -> str:
    """The name ``entrypoints.serve`` gives a job's adapter (its job id: ``.../jobs/<id>/model``)."""
    return model.parent.name if model.name == "model" else model.name


def _stop(folder: Path, state: dict[str, Any], grace_s: float) -> None:
    from launcher.backends.local import _lock_held, _signal_group

    pgid = state.get("pgid")
    if not pgid:
        return
    _signal_group(int(pgid), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _lock_held(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _lock_held(folder):
        _signal_group(int(pgid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _lock_held(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
    _reap(int(state.get("pid") or 0))


def _reap(pid: int) -> None:
    """Collect the exit status when the server was this process's child (no zombie in a long-lived caller)."""
    if pid:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
