"""The local backend: a training job is a detached process on this machine.

Each job lives in ``$LAUNCHER_HOME/jobs/<job-id>/``, in the SageMaker layout the training entrypoint
expects (``input/config/hyperparameters.json``, ``input/data/<channel>/``, ``model/``, ``checkpoints/``,
``output/failure``), plus ``job.json`` (what was submitted, and the command), ``state.json`` (written by
the submitter and the runner only), ``logs.txt`` (stdout and stderr of every attempt, appended) and
``cancel`` (present once a user asked to cancel).

Design decisions that are not obvious:

* **Liveness is a lock, not a pid.** The submitter takes an exclusive flock on ``run.lock`` before it
  starts anything and hands the open descriptor to the runner (``_local_runner``), which hands it to the
  entrypoint. The lock is held exactly as long as any process of the job lives, and the kernel drops it
  when they die, however they die. A pid could be reused; a lock cannot be held by a stranger.
* **State survives the CLI.** The runner is started in a new session and daemonises (double fork), so
  closing the terminal or Ctrl-C in ``launcher train`` leaves the job running. The runner waits for the
  entrypoint and records its exit code atomically; if the runner itself is killed, ``status`` sees a
  free lock and a non-final state and says so.
* **Resubmission is the next attempt.** ``api.launch`` decides (look-up before create); ``submit`` runs
  attempt N in the same folder under a per-job lock: the inputs are staged again and the entrypoint
  resumes from its newest checkpoint. Should two launches race, the loser finds the run lock held and
  starts nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from launcher.backends._local_serving import LocalServing
from launcher.backends.base import Backend, Feature, JobExists, JobInfo, JobRef, JobState, LaunchRequest
from launcher.errors import BackendError, NotFoundError, UnsupportedError, UserInputError
from launcher.state import file_lock, home, read_json, write_json

if TYPE_CHECKING:
    from launcher.spec import JobSpec

ENTRYPOINT = "entrypoints.train"
DEFAULT_GRACE_S = 30.0


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class LocalBackend(LocalServing, Backend):
    """Jobs as detached processes under ``$LAUNCHER_HOME/jobs``; endpoints under ``$LAUNCHER_HOME/endpoints``
    (``_local_serving``)."""

    name: ClassVar[str] = "local"
    unsupported: ClassVar[dict[Feature, str]] = {
        Feature.MULTI_NODE: "it runs on this one machine. To fix: set compute.nodes to 1, or use --backend sagemaker/vertex",
    }

    def __init__(self, root: Path | None = None, grace_s: float | None = None, entrypoint: str = ENTRYPOINT):
        self.root = Path(root) if root else home()
        self.grace_s = float(os.environ.get("LAUNCHER_CANCEL_GRACE", DEFAULT_GRACE_S)) if grace_s is None else grace_s
        self.entrypoint = entrypoint

    # --- paths -------------------------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _existing(self, job_id: str) -> Path:
        folder = self.job_dir(job_id)
        if not (folder / "job.json").is_file():
            raise NotFoundError(
                f"no local job '{job_id}' under {self.jobs_dir}. To fix: run 'launcher list' to see job ids"
            )
        return folder

    # --- training ----------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        """What the local backend cannot run, raised before anything is written; warnings for what it
        runs differently from what the spec asks (a GPU this machine lacks, spot)."""
        if spec.compute.nodes > 1:
            self.require(Feature.MULTI_NODE)
        for channel, uri in spec.data.channels().items():
            if "://" in uri:
                raise UnsupportedError(
                    f"data.{channel} = '{uri}': the local backend reads local files only. "
                    "To fix: download the data and point at the local copy, or use --backend sagemaker/vertex"
                )
        warnings = []
        gpu = _has_cuda_gpu()
        if spec.local.device == "cuda" and not gpu:
            raise UnsupportedError("local.device is cuda but this machine has no CUDA GPU. To fix: local.device: auto (or cpu)")
        if spec.compute.accelerator is not None and not gpu and spec.local.device != "cpu":
            warnings.append(f"the spec asks for {spec.compute.accelerator} but this machine has no CUDA GPU: "
                            "the local backend trains on the CPU")
        if spec.compute.spot:
            warnings.append("compute.spot applies to SageMaker and Vertex AI; the local backend ignores it")
        return warnings

    def check_gpus(self, gpus: int) -> None:
        """``--gpus N``: N processes, one per GPU of this machine; more than it has is refused."""
        visible = visible_gpus()
        if gpus < 1 or gpus > visible:
            raise UserInputError(f"--gpus {gpus}: this machine has {visible} visible GPU(s). To fix: --gpus 1 to {visible}"
                                 if visible else f"--gpus {gpus}: this machine has no visible GPU. To fix: drop --gpus")

    def _stage(self, request: LaunchRequest, folder: Path) -> None:
        """Copy the data files into ``input/data/<channel>/`` and write the settings as the entrypoint
        reads them; the new ``input/`` replaces the old one in one rename."""
        from launcher.data import dataset_files

        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".input-", dir=folder))
        try:
            for channel, uri in request.channels.items():
                target = tmp / "data" / channel
                target.mkdir(parents=True)
                source = Path(uri)
                for path in dataset_files(source):
                    name = "__".join(path.relative_to(source).parts) if source.is_dir() else path.name
                    shutil.copyfile(path, target / name)
            write_json(tmp / "config" / "hyperparameters.json", request.config.to_hyperparameters())
            old = folder / "input"
            if old.exists():
                old.rename(folder / f".input-old-{os.getpid()}")
            tmp.rename(old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            for leftover in folder.glob(".input-old-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def describe(self, request: LaunchRequest) -> dict[str, Any]:
        folder = self.job_dir(request.job_id)
        return {**request.to_dict(), "job_dir": str(folder),
                "command": [sys.executable, "-m", self.entrypoint, "--root", str(folder)],
                "torchrun": request.torchrun(["127.0.0.1"]),
                "hyperparameters.json": request.config.to_hyperparameters()}

    def find(self, job_id: str) -> JobRef | None:
        folder = self.job_dir(job_id)
        if not (folder / "job.json").is_file():
            return None
        return JobRef(self.name, job_id, native_id=str(folder), attempt=int(read_json(folder / "state.json").get("attempt", 1)))

    def submit(self, request: LaunchRequest) -> JobRef:
        job_id = request.job_id
        folder = self.job_dir(job_id)
        with file_lock(self.root / "locks" / f"{job_id}.lock"):
            lock = _take_run_lock(folder)
            if lock is None:  # another launch started it a moment ago: start nothing
                raise JobExists(self.find(job_id) or JobRef(self.name, job_id, native_id=str(folder)))
            first = not (folder / "job.json").is_file()
            if not first and int(read_json(folder / "state.json").get("attempt", 0)) >= request.attempt:
                os.close(lock)  # this attempt was started already (a launch that raced ours and finished)
                raise JobExists(self.find(job_id))
            try:
                try:
                    self._stage(request, folder)
                except BaseException:
                    if first:  # leave no half-made job behind
                        shutil.rmtree(folder, ignore_errors=True)
                    raise
                if not first:  # a resubmission may ask for another number of GPUs: checkpoints resume on any
                    job = read_json(folder / "job.json")
                    write_json(folder / "job.json", {**job, "processes": request.processes_per_host})
                if first:
                    write_json(folder / "job.json", {
                        "job_id": job_id, "name": request.name, "run_name": request.run_name, "created_at": now(),
                        "created_ts": time.time(), "device": request.device, "request": request.to_dict(),
                        "processes": request.processes_per_host,
                        "command": [sys.executable, "-m", self.entrypoint, "--root", str(folder)],
                    })
                with contextlib.suppress(FileNotFoundError):
                    (folder / "cancel").unlink()
                self._start(folder, lock, request.attempt)
            finally:
                os.close(lock)
        return JobRef(self.name, job_id, native_id=str(folder), attempt=request.attempt)

    def _start(self, folder: Path, lock_fd: int, attempt: int) -> None:
        """Start the runner detached (new session, double fork); it inherits the run lock."""
        job = _read_json(folder / "job.json")
        # Several processes: the entrypoint starts torchrun for them (--standalone, one node).
        env = dict(os.environ, LAUNCHER_DEVICE=job["device"], PYTHONUNBUFFERED="1", LAUNCHER_NPROC_PER_NODE=str(job.get("processes", 1)))
        write_json(folder / "state.json", {"state": "PENDING", "attempt": attempt, "updated_at": now()})
        with open(folder / "logs.txt", "ab") as log:
            runner = subprocess.Popen(
                [sys.executable, "-m", "launcher.backends._local_runner", str(folder), str(lock_fd)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=folder,
                env=env,
                pass_fds=(lock_fd,),
                start_new_session=True,
            )
        if runner.wait() != 0:  # the first process only forks and exits
            raise BackendError(f"could not start the local runner for {folder.name}. To fix: read {folder / 'logs.txt'}, then run the command again")

    def status(self, ref: JobRef) -> JobInfo:
        job_id = ref.job_id
        folder = self._existing(job_id)
        job = _read_json(folder / "job.json")
        state = _read_json(folder / "state.json")
        alive = _lock_held(folder)
        cancel = (folder / "cancel").exists()
        value = JobState(state.get("state", "PENDING"))
        message = state.get("message", "")
        if alive:
            if cancel:
                value, message = JobState.STOPPING, "cancel requested"
        elif value.active:
            if cancel:
                value, message = JobState.CANCELLED, "cancelled by user"
            else:
                value = JobState.FAILED
                message = (
                    "the job's processes ended without recording an exit code (killed, or the machine restarted). "
                    "To fix: submit it again to resume from its newest checkpoint"
                )
        return JobInfo(
            job_id=job_id,
            backend=self.name,
            state=value,
            name=job.get("name", ""),
            created_at=job.get("created_at", ""),
            updated_at=state.get("updated_at", ""),
            message=message,
            output=str(folder / "model"),
            attempt=int(state.get("attempt", 1)),
            native_id=str(folder),
            checkpoint_step=_newest_checkpoint(folder / "checkpoints"),
            extra={
                "run_name": job.get("run_name", ""),
                "exit_code": state.get("exit_code"),
                "pgid": state.get("pgid"),
                "device": job.get("device", ""),
                "job_dir": str(folder),
                "logs": str(folder / "logs.txt"),
            },
        )

    def logs(self, ref: JobRef, follow: bool = False, poll: float = 0.2) -> Iterator[str]:
        folder = self._existing(ref.job_id)
        path = folder / "logs.txt"
        pending = b""
        with open(path, "a+b") as handle:  # "a+" creates it when the job has not written yet
            handle.seek(0)
            while True:
                chunk = handle.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace")
                    continue
                if not follow or not _lock_held(folder):
                    rest = handle.read()  # whatever was written between the last read and the job's end
                    pending += rest
                    if rest:
                        continue
                    break
                time.sleep(poll)
        if pending:
            yield pending.decode("utf-8", "replace")

    def cancel(self, ref: JobRef) -> JobInfo:
        """SIGTERM to the job's process group (the entrypoint checkpoints and exits), then SIGKILL
        once ``grace_s`` seconds have passed (``LAUNCHER_CANCEL_GRACE``, default 30)."""
        job_id = ref.job_id
        folder = self._existing(job_id)
        if _lock_held(folder):
            (folder / "cancel").write_text(now() + "\n", encoding="utf-8")
            pgid = self._wait_for_pgid(folder)
            if pgid is not None:
                self._terminate(folder, pgid, self.grace_s)
        # Interrupted (before, or just as the cancel arrived): nothing runs, so it ends here. The
        # checkpoint stays, so submitting again still resumes.
        with file_lock(self.root / "locks" / f"{job_id}.lock"):  # not racing a resubmission
            if self.status(ref).state is JobState.INTERRUPTED and not _lock_held(folder):
                _merge_state(folder, state="CANCELLED", ended_at=now(),
                             message="cancelled by user after an interruption; submit it again to resume from its checkpoint")
        return self.status(ref)

    @staticmethod
    def _terminate(folder: Path, pgid: int, grace_s: float) -> None:
        """SIGTERM the group, SIGKILL it if the runner still holds its lock after ``grace_s``."""
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _lock_held(folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _lock_held(folder):
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _lock_held(folder) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _wait_for_pgid(self, folder: Path) -> int | None:
        """The job's process group, which the runner records first thing; None once the job has ended."""
        deadline = time.monotonic() + 10
        while _lock_held(folder):
            pgid = _read_json(folder / "state.json").get("pgid")
            if pgid:
                return int(pgid)
            if time.monotonic() > deadline:
                raise BackendError(f"cannot find the process group of job {folder.name}. To fix: read {folder / 'logs.txt'}, then run the command again")
            time.sleep(0.05)
        return None

    def list(self, state: JobState | None = None) -> list[JobInfo]:
        if not self.jobs_dir.is_dir():
            return []
        found = []
        for folder in self.jobs_dir.iterdir():
            if folder.name.startswith(".") or not (folder / "job.json").is_file():
                continue
            info = self.status(JobRef(self.name, folder.name))
            if state is None or info.state is state:
                created = _read_json(folder / "job.json").get("created_ts", 0.0)
                found.append((created, info))
        return [info for _, info in sorted(found, key=lambda pair: pair[0], reverse=True)]

    def artifacts(self, ref: JobRef) -> Path:
        return self._existing(ref.job_id) / "model"


# --- helpers shared with the runner ------------------------------------------------------------------
_read_json = read_json


def _has_cuda_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU, without importing torch (which takes seconds)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def visible_gpus() -> int:
    """The NVIDIA GPUs this machine's processes see (its device files, narrowed by CUDA_VISIBLE_DEVICES),
    without importing torch."""
    count = sum(1 for p in Path("/dev").glob("nvidia*") if p.name.removeprefix("nvidia").isdigit())
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        count = min(count, len([d for d in chosen.split(",") if d.strip() and d.strip() != "-1"]))
    return count


def _newest_checkpoint(directory: Path) -> int | None:
    """The step of the newest complete checkpoint (what a resubmission resumes from)."""
    from entrypoints import checkpoint  # the completeness rule lives with the writer (stdlib only)

    found = checkpoint.complete(directory)
    return int(found[-1].name.removeprefix("step-")) if found else None


def _merge_state(folder: Path, **updates: Any) -> None:
    state = _read_json(folder / "state.json")
    state.update(updates, updated_at=now())
    write_json(folder / "state.json", state)


def _take_run_lock(folder: Path) -> int | None:
    """Open ``run.lock`` and take it exclusively; None when the job holds it (it is alive).
    Retries briefly, because a concurrent ``status`` probe holds it for microseconds."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.02)
    os.close(fd)
    return None


def _lock_held(folder: Path) -> bool:
    """True while any process of the job is alive (it holds ``run.lock``)."""
    try:
        fd = os.open(folder / "run.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
