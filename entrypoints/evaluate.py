"""Evaluation: held-out loss, generation, ROUGE/BLEU/chrF and fact precision/recall of base vs tuned, and
general perplexity.

Metrics come from ``rouge_score`` and ``sacrebleu`` called directly: ``evaluate.load`` fetches metric
scripts from the Hub, which training jobs and tests may not reach. Fact precision and recall come from
``launcher.facts`` (numbers, dates, names and citations held to the prompt and the reference): wording
metrics rise for an answer that copies the phrasing but gets the client or the amount wrong. The base model is
the tuned model with its adapters switched off (``disable_adapter``), so both are scored on the same weights in
memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "fact_precision", "fact_recall")


def text_metrics(predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, float]:
    """ROUGE-1/2/L (mean F1, stemmed), corpus BLEU and chrF, and fact precision/recall, all on a 0-100 scale.

    ``prompts`` (one text per prediction, every prompt turn) also back a prediction's facts; without them
    fact precision is judged against the reference alone. See ``launcher.facts`` for the definitions.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    from launcher import facts

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    count = max(1, len(predictions))
    out = {key: 100.0 * value / count for key, value in totals.items()}
    out["bleu"] = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    out["chrf"] = sacrebleu.corpus_chrf(list(predictions), [list(references)]).score
    out.update(facts.corpus_scores(predictions, references, prompts))
    return out


def improvement_pct(base: dict[str, float], tuned: dict[str, float]) -> dict[str, float | None]:
    """Relative change of tuned over base in %, None where the base scored 0 (no meaningful ratio).
    Scores are on a 0-100 scale: below 0.01 counts as 0 (sacrebleu's smoothed BLEU of unrelated text
    is about 1e-300, whose ratio would print a 300-digit percentage)."""
    return {k: (100.0 * (tuned[k] - base[k]) / base[k] if base[k] >= 0.01 else None) for k in base}


def token_loss(model, batches, forward: Callable) -> tuple[float, int]:
    """Sum of target-token cross-entropies and the number of target tokens over ``batches``."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            loss_sum, n = forward(model, batch)
            total += float(loss_sum)
            count += int(n)
    return total, count


def perplexity(loss_sum: float, count: int) -> float:
    return math.exp(loss_sum / count) if count else float("nan")


def generate(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int, device: str, batch_size: int = 8,
             stop_token_ids: Sequence[int] | None = None, between_batches: Callable[[], None] | None = None,
             synced: bool = False) -> list[str]:
    """Greedy completions for token-id prompts (left-padded batches), special tokens stripped.
    Generation stops at any of ``stop_token_ids`` (the chat template's end of turn and EOS; default
    EOS). ``between_batches`` runs before each batch (the recipe's SIGTERM check: a long generation
    must not outlast a spot notice). ``synced``: every rank of a sharded (FSDP) model runs this in step
    (transformers' ``synced_gpus``: all keep calling forward until every rank is done)."""
    import torch

    model.eval()
    outputs: list[str] = []
    pad = tokenizer.pad_token_id
    eos = list(stop_token_ids) if stop_token_ids else tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        if between_batches is not None:
            between_batches()
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                synced_gpus=synced,
            )
        for row in generated[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs
