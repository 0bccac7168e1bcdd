"""The training recipe: setup -> train -> evaluate -> save. Run as ``python -m entrypoints.train``.

It runs inside the training container (SageMaker, Vertex AI) and locally (``--root JOBDIR``); see
``platform`` for the three contracts. One readable file: ``Recipe.setup`` hands off to small
``_setup_*`` helpers in the order that matters (device, then data, because the tokenizer decides the
rows, then the model, then the optimizer, which needs the trainable parameters, then resume, which
needs all of them); ``Recipe.train`` is the loop, top to bottom; ``Recipe.evaluate`` scores base vs
tuned; ``Recipe.save`` writes the model dir.

Invariants worth knowing before changing the loop:

* Loss is normalised over target tokens across the whole gradient-accumulation window: each
  micro-batch contributes ``sum(token losses) / targets_in_window``, so the gradient equals that of one
  big batch (the classic accumulation bug, a mean of per-micro-batch means, cannot happen).
* Everything that decides the next step (adapter, optimizer, scheduler, every RNG stream, the data
  position) is in the checkpoint, so a run killed at any step and resumed ends with the same adapter.
* SIGTERM (a spot interruption) sets a flag; the loop checkpoints at the next step boundary and the
  process exits with ``INTERRUPTED_EXIT_CODE`` (75). Re-running the same command resumes.

Exit codes: 0 done, 1 failed, 2 bad input (one line on stderr; nothing trained), 75 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from entrypoints import checkpoint, evaluate, models, platform, sequences
from launcher import data as datasets_io
from launcher import memory
from launcher.errors import DataError, LauncherError, MissingExtraError, SpecError, UserInputError
from launcher.spec import INTERRUPTED_EXIT_CODE, TrainConfig


class Interrupted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint."""


def log(message: str) -> None:
    print(message, flush=True)


def quiet_library_noise() -> None:
    """Keep job logs to what matters: bitsandbytes' notice that an optional CPU kernel package is
    absent (harmless; installing it would download from the Hub), transformers' deprecation of the
    ``is_gradient_checkpointing`` name that peft still reads, and the per-shard "Loading weights" bar."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class Recipe:
    def __init__(self, plat: platform.Platform, config: TrainConfig, on_step: Callable[[int], None] | None = None):
        if "train" not in plat.channels:
            raise SpecError("no 'train' data channel. To fix: pass the training data as the 'train' channel")
        if config.general_mix > 0 and "general_eval" not in plat.channels:
            raise SpecError("general_mix > 0 needs a 'general_eval' dataset to draw general text from. To fix: add data.general_eval or set general_mix: 0")
        if plat.world.world_size > 1:
            raise SpecError("multi-node training is not supported by this entrypoint yet. To fix: use one node (compute.nodes: 1)")
        self.platform = plat
        self.config = config
        self.on_step = on_step
        self.stop_requested = False
        self.loss_curve: list[dict[str, float]] = []
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_device()
        self._check_imports()  # everything the job will import, evaluation's included, before any training
        self.resume_from = checkpoint.latest(self.platform.checkpoint_dir, warn=log)
        with self.phase("tokenise"):
            self._setup_data()
        with self.phase("load"):
            self._setup_model()
            self._setup_batches()  # after the model: the fast path sizes micro-batches from measured memory
            self._setup_optimizer()  # after the batches: the schedule needs the number of steps
            self._maybe_resume()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Wall seconds of one phase of the job, into metrics.json's ``phases_s``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            phases = self.metrics.setdefault("phases_s", {})
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    def _setup_device(self) -> None:
        import torch

        wanted = os.environ.get("LAUNCHER_DEVICE", "auto")
        if wanted == "cuda" and not torch.cuda.is_available():
            raise SpecError("LAUNCHER_DEVICE=cuda but no CUDA GPU is visible. To fix: LAUNCHER_DEVICE=cpu or auto")
        self.device = "cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # The rules launcher plan plans with (launcher.memory): on the fast path "auto" checkpointing is
        # then settled from measured memory in _setup_batches.
        policy = memory.runtime_policy(self.config, self.device)
        self.fast, self.gradient_checkpointing = policy.fast, policy.gradient_checkpointing
        self.use_liger = False
        # Seed before anything draws random numbers (the data split, LoRA initialisation, dropout).
        random.seed(self.config.seed)
        import numpy as np

        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)
        log(f"device {self.device} ({precision}), method {self.config.method}, base {self.config.base_model}, "
            f"{'fast path' if self.fast else 'standard path'}")

    def _check_imports(self) -> None:
        """Fail in seconds, not after hours of training: a missing evaluation package once cost a whole
        trained job (the model dir held no adapter)."""
        import importlib

        cfg = self.config
        needed = {"peft": "LoRA", "safetensors": "Checkpoints"}
        if cfg.eval_samples:
            needed |= {"rouge_score": "Evaluation (ROUGE)", "sacrebleu": "Evaluation (BLEU, chrF)"}
        if cfg.method == "qlora":
            needed["bitsandbytes"] = "QLoRA"
        for module, purpose in needed.items():
            try:
                importlib.import_module(module)
            except ImportError:
                raise MissingExtraError(module, "train", purpose) from None

    def _setup_data(self) -> None:
        cfg = self.config
        channels = self.platform.channels
        train = datasets_io.load_examples(channels["train"])  # parse (and reject bad lines) before anything heavy
        if "eval" in channels:
            eval_examples = datasets_io.load_examples(channels["eval"])
        else:  # a seeded held-out split
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_eval = max(1, round(len(train) * cfg.eval_fraction))
            if len(train) - n_eval < 1:
                raise DataError(f"{channels['train']}: {len(train)} example(s) cannot be split into train and eval. To fix: add examples or an eval file")
            eval_examples = [train[i] for i in sorted(order[:n_eval])]
            train = [train[i] for i in sorted(order[n_eval:])]
        general: list = []
        mixed: list = []
        if "general_eval" in channels:
            general = datasets_io.load_examples(channels["general_eval"], allow_text=True)
            if cfg.general_mix > 0:
                random.Random(cfg.seed + 1).shuffle(general)
                held_out = max(1, len(general) // 5)
                wanted = round(len(train) * cfg.general_mix / (1 - cfg.general_mix))
                mixed = general[held_out : held_out + wanted]
                general = general[:held_out]
                if len(mixed) < wanted:
                    log(f"warning: general_mix wants {wanted} general examples but only {len(mixed)} are left after holding out {held_out} for evaluation")
        self.sources = {name: datasets_io.dataset_files(path) for name, path in channels.items()}
        self.tokenizer = models.load_tokenizer(cfg.base_model, token=models.hub_token(cfg))

        tokenized = self._tokenize(train + mixed, "train")
        fully = [i for i, t in enumerate(tokenized) if t.n_targets == 0]
        truncated = sum(1 for t in tokenized if t.truncated)
        if len(fully) > cfg.max_truncated_fraction * len(tokenized):
            worst = max(len(sequences.prompt_ids(self.tokenizer, (train + mixed)[i])) for i in fully)
            raise DataError(
                f"{channels['train']}: {len(fully)} of {len(tokenized)} training examples "
                f"({100 * len(fully) / len(tokenized):.1f}%) lose their whole answer to truncation at "
                f"max_seq_len={cfg.max_seq_len} (limit {100 * cfg.max_truncated_fraction:.0f}%). "
                f"To fix: raise max_seq_len above {worst} or shorten the prompts"
            )
        if fully:
            log(f"warning: {len(fully)} training example(s) lost their whole answer to truncation and are skipped: "
                + ", ".join(f"{(train + mixed)[i].source}:{(train + mixed)[i].line}" for i in fully[:5]))
        self.train_tokens = [t for t in tokenized if t.n_targets > 0]
        if not self.train_tokens:
            raise DataError(f"{channels['train']}: no training example has an answer left after truncation. To fix: raise max_seq_len")
        self.eval_examples = eval_examples
        self.eval_tokens = [t for t in self._tokenize(eval_examples, "eval") if t.n_targets > 0]
        if not self.eval_tokens:
            raise DataError("no eval example has an answer left after truncation. To fix: raise max_seq_len or shorten the eval prompts")
        self.general_tokens = self._tokenize(general, "general") if general else []
        self.metrics["data"] = {
            "train_examples": len(train),
            "eval_examples": len(eval_examples),
            "truncated": truncated,
            "fully_truncated": len(fully),
            "general_mixed": len(mixed),
        }
        log(f"data: {len(train)} train, {len(eval_examples)} eval, {len(mixed)} general mixed, {truncated} truncated")

    def _tokenize(self, examples: list, what: str) -> list[sequences.Tokenized]:
        from tqdm.auto import tqdm

        return [
            sequences.tokenize(self.tokenizer, example, self.config.max_seq_len)
            for example in tqdm(examples, desc=f"Tokenising {what}", unit="ex", disable=None, mininterval=2)
        ]

    def _setup_model(self) -> None:
        from entrypoints import fast

        cfg = self.config
        if self.fast and cfg.kernels != "none":
            model_type = self.model_type()
            self.use_liger = fast.apply_liger(model_type)  # patches classes: must precede building the model
            if cfg.kernels == "liger" and not self.use_liger:
                raise SpecError(f"kernels: liger needs liger-kernel, triton and a CUDA GPU, and a supported architecture (got '{model_type}'). To fix: kernels: auto")
        if cfg.fp8 == "on":
            lacking = None  # (method qlora and fast_path off are refused when the spec is validated)
            if not self.fast:
                lacking = "fast_path off"
            elif self.device != "cuda":
                lacking = f"device {self.device}"
            elif not fast.fp8_available():
                lacking = "compute capability {}.{}".format(*fast.torch.cuda.get_device_capability())
            if lacking:
                raise SpecError("fp8: on needs method lora on the fast path and a GPU with float8 matmuls (compute capability "
                                f"8.9+: L4, L40S, H100, H200); this run has {lacking}. To fix: fp8: off")
        # Per-example attention: FlashAttention varlen or FlexAttention on a GPU; on the CPU (where
        # FlexAttention has no backward) the same mask, dense, with SDPA (eager where the model soft-caps
        # attention scores, which SDPA cannot).
        arch = self.base_config()
        softcap = getattr(arch, "attn_logit_softcapping", None)
        self.attention = "eager" if softcap else "sdpa"
        if self.fast and self.device == "cuda":
            varlen = fast.varlen_available()
            if cfg.attention == "varlen" and not varlen:
                raise SpecError("attention: varlen needs PyTorch's FlashAttention varlen kernel (torch >= 2.10) and an Ampere "
                                "or newer GPU. To fix: attention: auto")
            if cfg.attention == "varlen" and softcap:
                raise SpecError(f"attention: varlen cannot soft-cap attention scores, which {arch.model_type} does "
                                f"(attn_logit_softcapping {softcap}). To fix: attention: auto (FlexAttention)")
            self.attention = "varlen" if varlen and cfg.attention != "flex" and not softcap else "flex"
        window = sliding_window(arch)
        if window is not None and window < cfg.max_seq_len and self.attention != "varlen":
            raise SpecError(f"{arch.model_type} attends within a sliding window of {window} tokens, which the packed-example "
                            f"mask of attention '{self.attention}' does not apply to sequences of max_seq_len {cfg.max_seq_len}. "
                            f"To fix: max_seq_len: {window} or less" + ("" if softcap else ", or the GPU fast path with attention: varlen"))
        implementation = {"varlen": fast.register_varlen, "flex": lambda: "flex_attention"}.get(self.attention, lambda: self.attention)()
        base = self.load_base(attn_implementation=implementation)
        self.logit_softcap = getattr(base.config, "final_logit_softcapping", None)
        self.model = models.add_lora(
            base, cfg, gradient_checkpointing=self.gradient_checkpointing, upcast_non_quantized=not self.fast
        )
        # from_pretrained leaves every module in eval mode and the peft wrapper is born in training mode:
        # without this the decoder layers never checkpoint and LoRA dropout never drops.
        self.model.train()
        if self.fast:
            fast.disable_lora_input_upcast(self.model)
            fast.fuse_lora(self.model, fp8=cfg.fp8 == "on")
        if cfg.torch_compile == "layers":
            if not self.fast:
                raise SpecError("torch_compile: layers applies to the fast path. To fix: fast_path: on, or torch_compile: off")
            for layer in self.decoder_layers():
                layer.compile(dynamic=False)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log(f"model: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    def base_config(self):
        """The base model's transformers config (read before the weights, which it helps load)."""
        from transformers import AutoConfig

        with models.hub_errors(self.config.base_model):
            return AutoConfig.from_pretrained(models.resolve(self.config.base_model), token=models.hub_token(self.config))

    def model_type(self) -> str:
        return self.base_config().model_type

    def load_base(self, attn_implementation: str):
        """The frozen base model (the GPU benchmark overrides this to build random weights from a config)."""
        return models.load_base(self.config, self.device, dtype=self.dtype, attn_implementation=attn_implementation)

    def _setup_batches(self) -> None:
        """Rows and optimizer steps. The spec decides every step, on every path and GPU: rows of at
        most max_seq_len tokens (packed, or one example each), micro_batch_size x
        gradient_accumulation_steps rows a step, so the same spec trains the same model wherever it
        runs. The fast path only decides how a step is split into micro-batches: its examples packed
        into as few micro-batches of at most micro_batch_tokens tokens (sized from GPU memory) as hold
        them. The loss is normalised over the step's target tokens, so the split leaves the gradient as is."""
        cfg = self.config
        self.rows = sequences.make_rows(self.train_tokens, cfg.max_seq_len, cfg.packing)
        self.rows_per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps
        if self.fast:
            self.micro_batch_tokens = self._micro_batch_tokens()
            self.metrics["fast_path"] = {
                "micro_batch_tokens": self.micro_batch_tokens,
                "bytes_per_token": getattr(self, "bytes_per_token", None),
                "kernels": "liger" if self.use_liger else "none",
                "attention": self.attention,
                "gradient_checkpointing": self.gradient_checkpointing,
                "checkpointed_layers": self.checkpointed_layers(),
            }
        self.windows_per_epoch = math.ceil(len(self.rows) / self.rows_per_step)
        self.total_steps = cfg.max_steps or self.windows_per_epoch * cfg.epochs
        self.metrics["data"]["packed_rows"] = len(self.rows)
        log(f"batches: {len(self.rows)} rows of <= {cfg.max_seq_len} tokens, {self.rows_per_step} a step, {self.total_steps} optimizer steps"
            + (f" (micro-batches of <= {self.micro_batch_tokens} tokens)" if self.fast else ""))

    def _micro_batch_tokens(self) -> int:
        """Explicit, remembered from the checkpoint being resumed (so a resumed run packs identically),
        or the largest budget the GPU's memory holds (``fast.size_micro_batches``: measured by probe steps)."""
        from entrypoints import fast

        cfg = self.config
        if cfg.micro_batch_tokens:
            return fast.round_up(max(cfg.micro_batch_tokens, cfg.max_seq_len))
        found = self.resume_from
        if found is not None:
            position = json.loads((found / "position.json").read_text())
            if position.get("micro_batch_tokens"):
                if position.get("checkpointed_layers") is not None:  # the memory plan it ran with
                    self.checkpoint_layers(position["checkpointed_layers"])
                return int(position["micro_batch_tokens"])
        if self.device != "cuda":
            if cfg.max_memory_gib is not None:
                log("max_memory_gib applies to GPUs; ignored on the CPU")
            return fast.round_up(4 * cfg.max_seq_len)
        sizing = fast.size_micro_batches(
            self.model, lambda tokens: fast.probe_memory(self.model, self.forward, tokens, cfg.max_seq_len), cfg, log=log
        )
        self.bytes_per_token = sizing.bytes_per_token
        self.gradient_checkpointing = sizing.checkpointed_layers > 0
        return sizing.micro_batch_tokens

    def decoder_layers(self) -> list:
        from entrypoints import fast

        return fast.decoder_layers(self.model)

    def checkpointed_layers(self) -> int:
        from entrypoints import fast

        return fast.checkpointed_layers(self.model)

    def checkpoint_layers(self, count: int) -> None:
        """Gradient checkpointing on the last ``count`` decoder layers, off on the others."""
        from entrypoints import fast

        fast.checkpoint_layers(self.model, count)
        self.gradient_checkpointing = count > 0

    def _setup_optimizer(self) -> None:
        import torch
        from transformers import get_scheduler

        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=self.device == "cuda"
        )
        self.scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps), num_training_steps=self.total_steps,
        )
        self.step, self.epoch, self.window = 0, 0, 0
        self.saved_step = None

    def _maybe_resume(self) -> None:
        from peft import set_peft_model_state_dict

        found = self.resume_from
        if found is None:
            return
        adapter, state, position = checkpoint.load(found)
        self._check_same_training(found, position.get("trained_on"))
        set_peft_model_state_dict(self.model, adapter)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.epoch, self.window = position["step"], position["epoch"], position["window"]
        self.loss_curve = position["loss_curve"]
        self.saved_step = self.step
        log(f"resumed from {found.name}: step {self.step}/{self.total_steps}, epoch {self.epoch}")

    def trained_on(self) -> dict[str, Any]:
        """What defines this training: the settings that shape the adapter and the data's content
        (hashed once per process: every checkpoint records it)."""
        if not hasattr(self, "_trained_on"):
            channels = ["train"] + (["general_eval"] if self.config.general_mix > 0 else [])
            self._trained_on = {"config": self.config.training_settings(),
                                "data": {name: datasets_io.fingerprint(self.sources[name]) for name in channels}}
        return self._trained_on

    def _check_same_training(self, found: Path, stored: dict | None) -> None:
        """Resuming another training's checkpoint would silently mix two runs: refuse it."""
        current = self.trained_on()
        if stored is None or stored == current:
            return  # (None: written before checkpoints recorded it)
        changed = [f"{k} {stored['config'].get(k)!r} -> {v!r}" for k, v in current["config"].items() if stored["config"].get(k) != v]
        changed += [f"the {name} data's content" for name in current["data"] if stored["data"].get(name) != current["data"][name]]
        raise SpecError(
            f"checkpoint {found} was written by a different training ({'; '.join(changed) or 'settings differ'}); resuming "
            "would mix the two. To fix: start a new run (launcher train --new-run), or restore the original config and data"
        )

    # ------------------------------------------------------------------------------------------------
    # train
    # ------------------------------------------------------------------------------------------------
    def forward(self, model, batch) -> tuple[Any, Any]:
        """Sum of target-token losses and the number of target tokens for one batch."""
        import torch
        import torch.nn.functional as F

        # Pinned batches (collate_window) are copied without blocking the host.
        input_ids, targets, positions = (batch[k].to(self.device, non_blocking=True) for k in ("input_ids", "targets", "position_ids"))
        with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.fast:
                from entrypoints import fast

                base = model.get_base_model()
                hidden = base.get_decoder()(input_ids=input_ids, position_ids=positions, **self._attention_inputs(batch)).last_hidden_state
                # Logits only where there is a target (prompt tokens have none): the rows are picked on the
                # host copy of the targets, so the device never waits.
                keep = (batch["targets"].flatten() != sequences.IGNORE).nonzero().flatten().to(self.device, non_blocking=True)
                loss_sum = fast.linear_cross_entropy(hidden.flatten(0, 1).index_select(0, keep), base.get_output_embeddings(),
                                                     targets.flatten().index_select(0, keep), use_liger=self.use_liger,
                                                     softcap=self.logit_softcap)
            else:
                logits = model(input_ids=input_ids, position_ids=positions, **self._attention_inputs(batch)).logits
                loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=sequences.IGNORE, reduction="sum")
        return loss_sum, (targets != sequences.IGNORE).sum()

    def _attention_inputs(self, batch: dict) -> dict:
        """How the decoder keeps each packed example to itself: the examples' offsets for the varlen
        kernel (computed on the host copy of doc_ids), else a block-diagonal causal mask."""
        import torch

        if self.attention == "varlen":
            offsets, longest = sequences.cu_seqlens(batch["doc_ids"])
            offsets = offsets.to(self.device, non_blocking=True)
            return {"attention_mask": None, "cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets,
                    "max_length_q": longest, "max_length_k": longest}
        doc_ids = batch["doc_ids"].to(self.device, non_blocking=True)
        if self.attention == "flex":
            return {"attention_mask": sequences.block_mask(doc_ids)}
        mask = sequences.dense_mask(doc_ids)
        if self.attention == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(~mask, torch.finfo(self.dtype).min)
        return {"attention_mask": mask}

    def accumulate(self, micro_batches: list[dict]) -> tuple[Any, int]:
        """Backward over one optimizer step's micro-batches, normalised by the window's target tokens,
        so the gradient is the same however the window is split into micro-batches. Returns the summed
        loss as a tensor: reading it waits for the device, so the caller does that last."""
        n_targets = sum(int((b["targets"] != sequences.IGNORE).sum()) for b in micro_batches)
        total = 0.0
        for batch in micro_batches:
            loss_sum, _ = self.forward(self.model, batch)
            (loss_sum / n_targets).backward()
            total = total + loss_sum.detach()
        return total, n_targets

    def collate_window(self, window: list[list[list[int]]]) -> list[dict]:
        """One optimizer step's micro-batches as tensors; pinned on a GPU, so forward copies them
        without blocking the host. Fast-path rows are padded to whole attention blocks (to the full
        budget under torch_compile, whose compiled layers want one shape)."""
        pad = self.tokenizer.pad_token_id
        if self.fast:
            from entrypoints import fast

            width = self.micro_batch_tokens if self.config.torch_compile == "layers" else None
            micro = [sequences.collate(rows, self.train_tokens, pad, multiple=fast.BLOCK, width=width) for rows in window]
        else:
            micro = [sequences.collate(rows, self.train_tokens, pad) for rows in window]
        if self.device == "cuda":
            micro = [{k: v.pin_memory() for k, v in b.items()} for b in micro]
        return micro

    def epoch_windows(self, epoch: int) -> list[list[list[list[int]]]]:
        """The epoch's optimizer steps: windows of micro-batches of rows, in a seeded per-epoch order.
        Every path makes the same steps from the same rows; the fast path then repacks each step's
        examples into micro-batches of one row of at most micro_batch_tokens tokens."""
        order = list(range(len(self.rows)))
        random.Random(self.config.seed * 1000 + epoch).shuffle(order)
        mb, ga = self.config.micro_batch_size, self.config.gradient_accumulation_steps
        batches = [[self.rows[i] for i in order[s : s + mb]] for s in range(0, len(order), mb)]
        windows = [batches[s : s + ga] for s in range(0, len(batches), ga)]
        if not self.fast:
            return windows
        repacked = []
        for window in windows:
            examples = [i for batch in window for row in batch for i in row]
            bins = sequences.pack([len(self.train_tokens[i]) for i in examples], self.micro_batch_tokens)
            repacked.append([[[examples[j] for j in b]] for b in bins])
        return repacked

    def train(self) -> None:
        import torch

        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        from tqdm.auto import tqdm

        started = time.perf_counter()
        self.tokens_seen = 0  # non-padding tokens this process trained on (effective tokens)
        # A progress bar on a terminal; in job logs (not a TTY) the periodic step lines stand alone.
        bar = tqdm(total=self.total_steps, initial=self.step, desc="Training", unit="step", disable=None, dynamic_ncols=True)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.model.train()  # every module: evaluation (a resumed run's, a probe's) leaves them in eval mode
        while self.step < self.total_steps:  # with max_steps, epochs continue until the step budget is spent
            windows = self.epoch_windows(self.epoch)
            upcoming = None  # the next step's micro-batches, collated while the device runs this one
            while self.window < len(windows) and self.step < self.total_steps:
                if self.stop_requested:
                    bar.close()
                    self._checkpoint()
                    raise Interrupted(f"stopped at step {self.step}")
                micro = upcoming or self.collate_window(windows[self.window])
                loss_sum, n_targets = self.accumulate(micro)
                following = self.window + 1
                upcoming = self.collate_window(windows[following]) if following < len(windows) and self.step + 1 < self.total_steps else None
                self.tokens_seen += sum(int((b["doc_ids"] >= 0).sum()) for b in micro)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                window_loss = float(loss_sum)  # the step's one wait for the device
                self.step += 1
                self.window += 1
                lr = self.scheduler.get_last_lr()[0]
                epoch_progress = self.epoch + self.window / len(windows)
                self.loss_curve.append({"step": self.step, "loss": window_loss / n_targets, "lr": lr,
                                        "epoch": round(epoch_progress, 4), "grad_norm": float(grad_norm)})
                bar.update(1)
                if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                    rate = self.tokens_seen / max(1e-9, time.perf_counter() - started)
                    line = f"step {self.step}/{self.total_steps} loss {window_loss / n_targets:.4f} lr {lr:.2e} tok/s {rate:.0f}"
                    if bar.disable:
                        log(line)
                    else:
                        bar.write(line)
                if self.on_step is not None:
                    self.on_step(self.step)
                if self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
            if self.window >= len(windows):
                self.epoch, self.window = self.epoch + 1, 0
        bar.close()
        if self.saved_step != self.step:
            self._checkpoint()  # the finished state: a restart after this goes straight to evaluation
        elapsed = time.perf_counter() - started
        self.metrics["train"] = {
            "steps": self.step,
            "max_steps": cfg.max_steps,
            "epochs": round(self.step / self.windows_per_epoch, 4),  # as trained: max_steps overrides epochs
            "examples": len(self.train_tokens),
            "target_tokens": sum(t.n_targets for t in self.train_tokens),
            "tokens_per_s": self.tokens_seen / elapsed if self.tokens_seen else 0.0,
            "runtime_s": elapsed,
            "peak_memory_bytes": _peak_memory(self.device),
            "device": self.device,
        }

    def _checkpoint(self) -> None:
        from peft import get_peft_model_state_dict

        position = {"step": self.step, "epoch": self.epoch, "window": self.window, "loss_curve": self.loss_curve,
                    "trained_on": self.trained_on(),
                    "micro_batch_tokens": getattr(self, "micro_batch_tokens", None),
                    "checkpointed_layers": self.checkpointed_layers() if self.fast else None}
        path = checkpoint.save(
            self.platform.checkpoint_dir, self.step,
            adapter=get_peft_model_state_dict(self.model), optimizer=self.optimizer, scheduler=self.scheduler,
            position=position, keep=self.config.keep_checkpoints,
        )
        self.saved_step = self.step
        log(f"checkpoint {path.name}")

    # ------------------------------------------------------------------------------------------------
    # evaluate
    # ------------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Losses first (held-out loss, general perplexity; base = adapters off), then generation."""
        cfg = self.config
        batches = self._loss_batches(self.eval_tokens)
        tuned_sum, count = evaluate.token_loss(self.model, batches, self.forward)
        with self.model.disable_adapter():
            base_sum, _ = evaluate.token_loss(self.model, batches, self.forward)
        self.metrics["eval"] = {"examples": len(self.eval_tokens), "loss_base": base_sum / count, "loss_tuned": tuned_sum / count}
        log(f"eval loss: base {base_sum / count:.4f} -> tuned {tuned_sum / count:.4f}")

        self.metrics["forgetting"] = None
        if self.general_tokens:
            batches = self._loss_batches(self.general_tokens)
            tuned_sum, n = evaluate.token_loss(self.model, batches, self.forward)
            with self.model.disable_adapter():
                base_sum, _ = evaluate.token_loss(self.model, batches, self.forward)
            ppl_base, ppl_tuned = evaluate.perplexity(base_sum, n), evaluate.perplexity(tuned_sum, n)
            rise = 100.0 * (ppl_tuned / ppl_base - 1.0)
            warning = rise > cfg.forgetting_threshold_pct
            self.metrics["forgetting"] = {"general_ppl_base": ppl_base, "general_ppl_tuned": ppl_tuned, "rise_pct": rise,
                                          "threshold_pct": cfg.forgetting_threshold_pct, "warning": warning}
            log(f"general perplexity: base {ppl_base:.3f} -> tuned {ppl_tuned:.3f} ({rise:+.1f}%)")
            if warning:
                log(f"WARNING: catastrophic forgetting: general perplexity rose {rise:.1f}% (threshold "
                    f"{cfg.forgetting_threshold_pct:.1f}%). Consider general_mix > 0, fewer epochs or a lower learning rate")
        self._check_stop()

        # Prompts whole, as training saw them: an example whose prompt does not fit max_seq_len was never
        # trained on either (it had no answer left), so it is not generated for.
        fitting = [e for e in self.eval_examples if len(sequences.prompt_ids(self.tokenizer, e)) < cfg.max_seq_len]
        if len(fitting) < len(self.eval_examples):
            log(f"generation: {len(self.eval_examples) - len(fitting)} eval example(s) skipped: their prompts exceed max_seq_len")
        picks = list(range(len(fitting)))
        random.Random(cfg.seed + 2).shuffle(picks)
        chosen = [fitting[i] for i in sorted(picks[: cfg.eval_samples])]
        prompts = [sequences.prompt_ids(self.tokenizer, e) for e in chosen]
        if self.attention not in ("sdpa", "eager"):  # generation has no packed examples: a plain padding mask
            self.model.get_base_model().set_attn_implementation("sdpa")
        stop = sequences.chat_format(self.tokenizer).stop_token_ids(self.tokenizer)

        def generate() -> list[str]:
            return evaluate.generate(self.model, self.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, device=self.device,
                                     stop_token_ids=stop, between_batches=self._check_stop,
                                     batch_size=32 if self.device == "cuda" else 8)

        self.model.config.use_cache = True
        tuned_out = generate() if chosen else []
        with self.model.disable_adapter():
            base_out = generate() if chosen else []
        self.model.config.use_cache = False
        references = [e.reference for e in chosen]
        if chosen:
            # Fact precision counts a fact as supported when the prompt (every turn before the answer) states it.
            sources = ["\n".join(content for _, content in e.prompt) for e in chosen]
            base = evaluate.text_metrics(base_out, references, prompts=sources)
            tuned = evaluate.text_metrics(tuned_out, references, prompts=sources)
            self.metrics["quality"] = {"base": base, "tuned": tuned, "improvement_pct": evaluate.improvement_pct(base, tuned), "samples_scored": len(chosen)}
        # The monitors' baseline: each eval prompt as a chat capture reads it (every turn's text) and the tuned answer.
        self.baseline_pairs = [("\n".join(content for _, content in e.prompt), t) for e, t in zip(chosen, tuned_out)]
        self.samples = [
            {"id": n, "prompt": [{"role": r, "content": c} for r, c in e.prompt], "reference": e.reference,
             "base": b, "tuned": t, "source": f"{e.source}:{e.line}"}
            for n, (e, b, t) in enumerate(zip(chosen, base_out, tuned_out))
        ][: cfg.review_samples]
        self._check_stop()

    def _loss_batches(self, tokens: list[sequences.Tokenized]) -> list[dict]:
        """Packed batches for a loss pass (packing does not change per-example losses: the mask isolates)."""
        pad = self.tokenizer.pad_token_id
        if self.fast:
            from entrypoints import fast

            width = self.micro_batch_tokens if self.config.torch_compile == "layers" else None
            rows = sequences.pack([len(t) for t in tokens], self.micro_batch_tokens)
            return [sequences.collate([row], tokens, pad, multiple=fast.BLOCK, width=width) for row in rows]
        rows = sequences.make_rows(tokens, self.config.max_seq_len, packing=True)
        step = self.config.micro_batch_size
        return [sequences.collate(rows[s : s + step], tokens, pad) for s in range(0, len(rows), step)]

    def _check_stop(self) -> None:
        if self.stop_requested:
            raise Interrupted("stopped during evaluation; training is checkpointed")

    # ------------------------------------------------------------------------------------------------
    # save
    # ------------------------------------------------------------------------------------------------
    def save_adapter(self) -> None:
        """The trained adapter and its tokenizer, before evaluation: an evaluation that fails loses no
        training (metrics.json, written last by ``save``, is what marks the model dir done)."""
        out = self.platform.model_dir
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        log(f"adapter saved in {out}")

    def save(self) -> dict[str, Any]:
        cfg = self.config
        out = self.platform.model_dir
        if cfg.merge:
            with self.phase("merge"):
                self._save_merged(out / "merged")
        checkpoint.write_atomic(out / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in self.samples))
        if getattr(self, "baseline_pairs", None):
            from monitoring.baseline import build_baseline

            # Descriptors, grounding and the pairs; no embeddings (the monitor extra is not the training image's:
            # 'launcher monitor poll' embeds the stored pairs once and caches them).
            build_baseline(self.baseline_pairs, embeddings=False,
                           source=f"training evaluation: {len(self.baseline_pairs)} eval prompts and the tuned model's answers").save(out)
        checkpoint.write_atomic(out / "manifest.json", json.dumps(self._manifest(), indent=2))
        metrics = {"schema": 1, "base_model": cfg.base_model, "method": cfg.method, **self.metrics, "loss_curve": self.loss_curve}
        checkpoint.write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))  # last: its presence means done
        return metrics

    def _save_merged(self, target: Path) -> None:
        """Merge into an unquantised copy of the base (merging into 4-bit weights would lose the adapter's precision)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            models.resolve(self.config.base_model), dtype=self.dtype, token=models.hub_token(self.config)
        )
        merged = PeftModel.from_pretrained(base, self.platform.model_dir).merge_and_unload()
        merged.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        del merged, base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _manifest(self) -> dict[str, Any]:
        chat = sequences.chat_format(self.tokenizer)
        packages = {}
        for name in ("launcher", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "rouge_score", "sacrebleu"):
            try:
                packages[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                packages[name] = None
        return {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "platform": self.platform.kind,
            "job_name": self.platform.job_name,
            "config": self.config.model_dump(),
            "base_model_resolved": models.resolve(self.config.base_model) if self.config.base_model == "tiny-llama" else self.config.base_model,
            "base_model_gguf": models.provenance(self.config.base_model),
            "device": self.device,
            "chat": {"end_of_turn": chat.end_of_turn, "bos": chat.bos, "stop_token_ids": chat.stop_token_ids(self.tokenizer)},
            "packages": packages,
            "datasets": {name: {"files": [str(p) for p in files], "sha256": datasets_io.fingerprint(files)} for name, files in self.sources.items()},
        }


def sliding_window(config) -> int | None:
    """The attention window some layers of this architecture use (None: every layer attends to the whole
    sequence). Qwen2 and others set ``sliding_window`` but turn it off (``use_sliding_window``, or no
    sliding layer among ``layer_types``)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return window if getattr(config, "use_sliding_window", True) else None


def _peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def summary(metrics: dict[str, Any]) -> None:
    """The final base-vs-tuned table: every change as a relative % beside the two values, as
    ``launcher report`` shows it."""
    from rich.console import Console
    from rich.table import Table

    from launcher.report import eval_loss_row, fmt_change

    table = Table(title="base vs tuned")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("change", justify="right")
    loss = eval_loss_row(metrics)
    if loss:
        base, tuned, change = loss
        table.add_row("eval loss", f"{base:.4f}", f"{tuned:.4f}", fmt_change(change, base))
    quality = metrics.get("quality")
    if quality:
        for key in evaluate.METRICS:
            pct = quality["improvement_pct"][key]
            table.add_row(key, f"{quality['base'][key]:.2f}", f"{quality['tuned'][key]:.2f}", fmt_change(pct))
    forgetting = metrics.get("forgetting")
    if forgetting:
        table.add_row("general ppl", f"{forgetting['general_ppl_base']:.3f}", f"{forgetting['general_ppl_tuned']:.3f}", fmt_change(forgetting["rise_pct"]))
    Console(width=100).print(table)


def run(plat: platform.Platform, config: TrainConfig, on_step: Callable[[int], None] | None = None, install_signals: bool = True) -> dict[str, Any]:
    """Set up, train, evaluate and save; raise Interrupted after a SIGTERM checkpoint."""
    quiet_library_noise()
    recipe = Recipe(plat, config, on_step=on_step)
    if install_signals:
        def request_stop(signum, frame):  # noqa: ARG001
            log("SIGTERM received: saving a checkpoint at the next step boundary")
            recipe.stop_requested = True

        signal.signal(signal.SIGTERM, request_stop)
    recipe.setup()
    with recipe.phase("train"):
        recipe.train()
    with recipe.phase("save"):
        recipe.save_adapter()
    with recipe.phase("evaluate"):
        recipe.evaluate()
    return recipe.save()


def main(argv: list[str] | None = None) -> int:
    plat = None
    try:
        plat = platform.detect(sys.argv[1:] if argv is None else argv)
        config = TrainConfig.from_mapping(plat.hyperparameters, source="hyperparameters")
        metrics = run(plat, config)
        summary(metrics)
        log(f"done: model in {plat.model_dir}")
        return 0
    except Interrupted as exc:
        log(f"interrupted: {exc}; re-run to resume from the last checkpoint")
        return INTERRUPTED_EXIT_CODE
    except LauncherError as exc:
        _fail(plat, str(exc))
        return exc.exit_code if isinstance(exc, UserInputError) else 1
    except Exception as exc:  # a crash: keep the traceback in the logs, the reason (one line) in the failure file
        import traceback

        traceback.print_exc()
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        _fail(plat, f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__)
        return 1


def _fail(plat: platform.Platform | None, message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    if plat is not None and plat.failure_file is not None:
        try:
            checkpoint.write_atomic(plat.failure_file, message + "\n")
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
