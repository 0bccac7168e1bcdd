"""One serving container, for the cloud fakes: ``python -m entrypoints.serve`` as a process on 127.0.0.1.

The SageMaker and Vertex AI fakes stand a real endpoint up with this: the serving entrypoint (the code
the serving image runs) in this interpreter, in its own process group, with the platform's environment;
every line it prints goes to ``on_line`` (the fake's log store); ``wait_ready`` polls the health route
until it answers 200, the process dies, or a deadline passes; ``stop`` sends SIGTERM to the group
(uvicorn finishes requests in flight, then the capture writer flushes), SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServingProcess:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, port: int, health_route: str,
                 on_line: Callable[[str], None] | None = None):
        self.args, self.env, self.cwd, self.port, self.health_route = args, env, cwd, port, health_route
        self.on_line = on_line or (lambda line: None)
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServingProcess:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "entrypoints.serve", *self.args], cwd=self.cwd,
                                        env={**self.env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                self.lines.append(line)
                self.on_line(line)
        self.process.stdout.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> str:
        """'' once the health route answers 200; otherwise why not (the process ended, or the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + self.health_route, timeout=2) as answer:
                    if answer.status == 200:
                        return ""
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if not self.alive():
                if self._reader is not None:
                    self._reader.join(5)
                return f"the container exited with status {self.process.returncode}"
            if time.monotonic() > deadline:
                return f"the container did not pass the health check {self.health_route} within {timeout:.0f} s"
            time.sleep(0.25)

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
