"""The local backend's runner: ``python -m launcher.backends._local_runner JOB_DIR LOCK_FD``.

Started by ``LocalBackend.submit`` in a new session with the job's ``run.lock`` held on ``LOCK_FD``. It
forks once more and the first process exits, so the runner is no child of the CLI (nothing to reap,
nothing to inherit a terminal's signals from). The runner starts the entrypoint command recorded in
``job.json`` (stdout and stderr go to ``logs.txt``, inherited), waits, and records the outcome in
``state.json``:

    exit 0  -> SUCCEEDED       exit 75 (checkpointed after SIGTERM) -> INTERRUPTED
    a user's cancel (the ``cancel`` file exists) -> CANCELLED, whatever the exit code
    anything else -> FAILED, message from ``output/failure`` or the last ``Error:`` line of this attempt

The runner survives the SIGTERM that ``cancel`` sends to the whole process group (a Python handler, so
the entrypoint still gets the default disposition at exec) and only waits for the entrypoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from launcher.backends.local import _merge_state, _read_json, now
from launcher.spec import INTERRUPTED_EXIT_CODE


def _failure_message(folder: Path, log_offset: int, code: int) -> str:
    failure = folder / "output" / "failure"
    if failure.is_file():
        text = failure.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return text.splitlines()[0]  # the reason; the entrypoint writes one line
    try:
        with open(folder / "logs.txt", "rb") as handle:
            handle.seek(log_offset)
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        lines = []
    errors = [line.strip() for line in lines if line.strip().startswith("Error:")]
    if errors:
        return errors[-1].removeprefix("Error:").strip()
    if code < 0:
        return f"the training process was killed by signal {signal.Signals(-code).name}"
    return f"the training process exited with code {code}; see {folder / 'logs.txt'}"


def run(folder: Path, lock_fd: int) -> int:
    job = _read_json(folder / "job.json")
    state = _read_json(folder / "state.json")
    attempt = state.get("attempt", 1)
    terminated = []

    def on_term(signum, frame):  # noqa: ANN001 - signal handler signature
        # The group-wide SIGTERM reaches the entrypoint by itself; forward only if it was not started yet.
        terminated.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    _merge_state(folder, pgid=os.getpgid(0))  # what cancel signals
    (folder / "output").mkdir(exist_ok=True)
    (folder / "output" / "failure").unlink(missing_ok=True)  # a previous attempt's reason is not this one's
    log_offset = (folder / "logs.txt").stat().st_size if (folder / "logs.txt").exists() else 0
    print(f"=== launcher: attempt {attempt} of job {folder.name} started {now()} ===", flush=True)
    if (folder / "cancel").exists():
        _merge_state(folder, state="CANCELLED", message="cancelled by user", exit_code=None)
        return 0
    try:
        child = subprocess.Popen(job["command"], stdin=subprocess.DEVNULL, cwd=folder, pass_fds=(lock_fd,))
    except OSError as exc:
        print(f"Error: cannot start {job['command'][0]}: {exc}", flush=True)
        _merge_state(folder, state="FAILED", message=f"cannot start the training process: {exc}", exit_code=None)
        return 1
    _merge_state(folder, state="RUNNING", pid=child.pid, started_at=now())
    if terminated:
        child.send_signal(signal.SIGTERM)
    code = child.wait()
    if (folder / "cancel").exists():
        final, message = "CANCELLED", "cancelled by user"
    elif code == 0:
        final, message = "SUCCEEDED", ""
    elif code == INTERRUPTED_EXIT_CODE:
        final, message = "INTERRUPTED", "interrupted after a checkpoint. To fix: submit it again to resume"
    else:
        final, message = "FAILED", _failure_message(folder, log_offset, code)
    how = {"CANCELLED": "cancelled by user", "INTERRUPTED": "checkpointed; submit it again to resume",
           "SUCCEEDED": "done"}.get(final, f"exit code {code}")
    print(f"=== launcher: attempt {attempt} ended {now()}: {final} ({how}) ===", flush=True)
    _merge_state(folder, state=final, message=message, exit_code=code, ended_at=now())
    return 0


def main() -> None:
    folder, lock_fd = Path(sys.argv[1]), int(sys.argv[2])
    if os.fork() > 0:  # the first process exits at once; the submitter waits for it
        os._exit(0)
    sys.exit(run(folder, lock_fd))


if __name__ == "__main__":
    main()
