"""Dataset formats and their validation (pure Python: no torch, no tokenizer).

A dataset is JSON Lines, one example a line, in one of the seed formats (auto-detected per file):

* ``{"prompt": "...", "completion": "..."}``
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (multi-turn)

and, for the general-text set of the forgetting check only, ``{"text": "..."}``. Every example is
normalised to a list of chat messages. Problems are reported as ``file:line: what is wrong. To fix: ...``;
the training entrypoint stops at the first, ``launcher validate`` collects them all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import DataError, NotFoundError, did_you_mean

FORMATS = ("prompt_completion", "messages", "text")
ROLES = ("system", "user", "assistant")
_KEYS = {
    "prompt_completion": {"prompt", "completion", "id", "metadata"},
    "messages": {"messages", "id", "metadata"},
    "text": {"text", "id", "metadata"},
}


@dataclass(frozen=True)
class Example:
    """One training example, normalised to chat messages (``text`` examples carry text instead)."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    source: str
    line: int
    fmt: str
    text: str | None = None

    @property
    def prompt(self) -> tuple[tuple[str, str], ...]:
        """The conversation up to (not including) the last assistant turn."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        """The last assistant turn: what the model is asked to produce."""
        return self.messages[-1][1] if self.messages else ""

    def key(self) -> str:
        """Normalised content, for duplicate and overlap detection."""
        body = self.text if self.text is not None else "\x1e".join(f"{r}\x1f{c.strip()}" for r, c in self.messages)
        return " ".join(body.lower().split())


def dataset_files(uri: str | Path) -> list[Path]:
    """The JSONL files of a dataset: a file, every ``*.jsonl`` in a folder (a SageMaker channel), or
    the files a wildcard in the last part matches (Vertex AI's ``gs://b/export/training-*``)."""
    path = Path(uri)
    if any(c in path.name for c in "*?["):
        files = sorted(p for p in path.parent.glob(path.name) if p.is_file())
        if not files:
            raise NotFoundError(f"no dataset file matches '{path}'. To fix: check the pattern and the folder")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        if not files:
            raise NotFoundError(f"dataset folder '{path}' holds no *.jsonl files. To fix: put the JSONL files there")
        return files
    if not path.is_file():
        raise NotFoundError(f"dataset '{path}' does not exist. To fix: check the path")
    return [path]


def fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def content_digest(uri: str | Path) -> str:
    """What a dataset holds, for the job identity: the SHA-256 of a local file or folder's JSONL files
    (their content, not their path: moving the checkout keeps the job), or, for ``s3://`` and ``gs://``
    prefixes, a hash of the objects' names and ETags / generations (read through ``launcher.artifacts``; no
    download)."""
    uri = str(uri)
    if uri.startswith(("s3://", "gs://")):
        from launcher import artifacts

        return hashlib.sha256(json.dumps(artifacts.object_versions(uri), sort_keys=True).encode()).hexdigest()
    return fingerprint(dataset_files(uri))


def iter_examples(
    uri: str | Path, *, allow_text: bool = False, errors: list[str] | None = None
) -> Iterator[Example]:
    """Yield the examples of a dataset. Raise DataError at the first bad line, or, when ``errors`` is
    given, append each problem to it and go on."""
    for path in dataset_files(uri):
        file_format: tuple[str, int] | None = None
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                where = f"{path}:{number}"
                try:
                    if not raw.strip():
                        continue
                    example = _parse_line(raw, where, allow_text)
                    if file_format is None:
                        file_format = (example.fmt, number)
                    elif example.fmt != file_format[0]:
                        raise DataError(
                            f"{where}: this line is in {example.fmt} format but line {file_format[1]} is in "
                            f"{file_format[0]} format. To fix: use one format per file"
                        )
                    yield Example(example.messages, str(path), number, example.fmt, example.text)
                except DataError as exc:
                    if errors is None:
                        raise
                    errors.append(str(exc))


def load_examples(uri: str | Path, *, allow_text: bool = False) -> list[Example]:
    examples = list(iter_examples(uri, allow_text=allow_text))
    if not examples:
        raise DataError(f"{uri}: the dataset holds no examples. To fix: add JSONL lines")
    return examples


def _parse_line(raw: bytes, where: str, allow_text: bool) -> Example:
    try:
        line = raw.decode("utf-8").rstrip("\r\n")  # so a JSON error points at a column of the line, not past it
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}). To fix: re-encode the file as UTF-8"
        ) from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}). To fix: correct or remove the line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}. To fix: one object per line")
    fmt = _detect(record, where, allow_text)
    unknown = sorted(set(record) - _KEYS[fmt])
    if unknown:
        hint = did_you_mean(unknown[0], _KEYS[fmt])
        raise DataError(
            f"{where}: unknown field '{unknown[0]}' in a {fmt} example.{hint} "
            f"To fix: use only {', '.join(sorted(_KEYS[fmt]))}"
        )
    if fmt == "text":
        text = _string(record, "text", where)
        return Example((), "", 0, fmt, text=text)
    if fmt == "prompt_completion":
        prompt = _string(record, "prompt", where)
        completion = _string(record, "completion", where)
        return Example((("user", prompt), ("assistant", completion)), "", 0, fmt)
    return Example(_messages(record["messages"], where), "", 0, fmt)


def _detect(record: dict, where: str, allow_text: bool) -> str:
    if "messages" in record:
        return "messages"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record and allow_text:
        return "text"
    keys = ", ".join(sorted(record)) or "none"
    expected = "'prompt'/'completion', 'messages'" + (" or 'text'" if allow_text else "")
    hint = ""
    for key in record:
        hint = did_you_mean(key, ["prompt", "completion", "messages"] + (["text"] if allow_text else []))
        if hint:
            break
    raise DataError(f"{where}: no {expected} field (found: {keys}).{hint} To fix: use one of the supported formats")


def _string(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing field '{key}'. To fix: add it")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}. To fix: write it as one JSON string")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty. To fix: fill it in or remove the line")
    return value


def _messages(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects. To fix: list the turns as such objects")
    turns = []
    for index, message in enumerate(value):
        at = f"{where}: messages[{index}]"
        if not isinstance(message, dict):
            raise DataError(f"{at} must be an object with 'role' and 'content'. To fix: write the turn as {{\"role\": ..., \"content\": ...}}")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise DataError(f"{at}: unknown field '{extra[0]}'.{did_you_mean(extra[0], ['role', 'content'])} To fix: use only role and content")
        role = message.get("role")
        if role not in ROLES:
            hint = did_you_mean(str(role), ROLES) if isinstance(role, str) else ""
            raise DataError(f"{at}: unknown role {role!r}.{hint} To fix: use one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"{at}: 'content' must be a string, got {type(content).__name__}. To fix: write the turn's text as one JSON string")
        if role == "assistant" and not content.strip():
            raise DataError(f"{at}: empty assistant turn. To fix: write the expected answer or remove the line")
        turns.append((role, content))
    _check_order([role for role, _ in turns], where)
    return tuple(turns)


def _check_order(roles: list[str], where: str) -> None:
    if "assistant" not in roles:
        raise DataError(f"{where}: no assistant turn, so there is nothing to learn. To fix: add the expected answer as an assistant message")
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        raise DataError(
            f"{where}: messages[{roles.index('system', 1)}]: a system message may only come first. "
            "To fix: move it to the start, or fold it into the next user turn"
        )
    for index, role in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            position = index + (len(roles) - len(body))
            raise DataError(
                f"{where}: messages[{position}] is '{role}' but '{expected}' was expected (user and assistant turns alternate, user first). "
                "To fix: merge or reorder the turns"
            )
    if body[-1] != "assistant":
        raise DataError(f"{where}: the last turn is 'user'; an example must end with an assistant turn. To fix: add the answer or drop the turn")


# --- dataset-level checks (launcher validate) -------------------------------------------------------
# ``validate_dataset`` never raises for a bad dataset: every problem lands in a report, so ``launcher
# validate`` can list them all and ``launcher train`` can refuse to stage on ``not report.ok``.
MIN_RECOMMENDED_EXAMPLES = 1000
NEAR_EMPTY_ALNUM = 3  # an answer or prompt with fewer letters/digits than this is "near-empty"
HISTOGRAM_BINS = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)


@dataclass
class DatasetReport:
    """What ``launcher validate`` says about one dataset (a channel: train, eval or general_eval)."""

    path: str
    formats: list[str] = field(default_factory=list)
    examples: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0
    near_empty: int = 0
    token_lengths: list[int] = field(default_factory=list)
    over_max_seq_len: int = 0
    overlap_with_train: int = 0
    channel: str = "train"
    files: list[str] = field(default_factory=list)
    checked: bool = True  # False for a remote dataset (s3://, gs://) that cannot be read here

    @property
    def ok(self) -> bool:
        return not self.errors

    def histogram(self, max_seq_len: int | None = None) -> list[tuple[str, int]]:
        """Token-length buckets ``("<=64", n), ("65-128", n), ...``; ``max_seq_len`` becomes an edge."""
        if not self.token_lengths:
            return []
        edges = sorted(set(HISTOGRAM_BINS) | ({max_seq_len} if max_seq_len else set()))
        top = max(self.token_lengths)
        edges = [e for e in edges if e < top] + [top]
        counts = [0] * len(edges)
        for length in self.token_lengths:
            counts[next(i for i, e in enumerate(edges) if length <= e)] += 1
        labels = [f"<={edges[0]}"] + [f"{lo + 1}-{hi}" for lo, hi in zip(edges, edges[1:])]
        first = next(i for i, n in enumerate(counts) if n)  # no run of empty buckets below the shortest
        return list(zip(labels, counts))[first:]

    def to_dict(self, max_seq_len: int | None = None) -> dict:
        """A JSON-ready summary (token lengths as statistics and a histogram, not the full list)."""
        lengths = sorted(self.token_lengths)
        stats = (
            {
                "min": lengths[0],
                "median": lengths[len(lengths) // 2],
                "p95": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
                "max": lengths[-1],
                "histogram": dict(self.histogram(max_seq_len)),
            }
            if lengths
            else None
        )
        return {
            "channel": self.channel,
            "path": self.path,
            "files": self.files,
            "checked": self.checked,
            "ok": self.ok,
            "formats": self.formats,
            "examples": self.examples,
            "duplicates": self.duplicates,
            "near_empty": self.near_empty,
            "over_max_seq_len": self.over_max_seq_len,
            "overlap_with_train": self.overlap_with_train,
            "tokens": stats,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def validate_dataset(
    train: str | Path,
    eval: str | Path | None = None,  # noqa: A002 - the channel's name
    general_eval: str | Path | None = None,
    *,
    count_tokens: Callable[[Example], int] | None = None,
    max_seq_len: int | None = None,
) -> list[DatasetReport]:
    """Check every given dataset; one report per dataset, train first.

    Errors (the dataset cannot be trained on): every invalid line as ``file:line: ...``, a missing
    file, an empty dataset. Warnings: duplicates, near-empty examples, examples longer than
    ``max_seq_len`` (when ``count_tokens`` is given), eval prompts that also appear in train, and a
    training set under ``MIN_RECOMMENDED_EXAMPLES``.
    """
    reports = []
    train_prompts: dict[str, str] | None = None
    for channel, uri in (("train", train), ("eval", eval), ("general_eval", general_eval)):
        if uri is None:
            continue
        report, examples = _check_one(channel, uri, count_tokens, max_seq_len)
        if channel == "train":
            train_prompts = {}
            for example in examples:
                train_prompts.setdefault(_prompt_key(example), f"{example.source}:{example.line}")
        elif train_prompts:
            _check_overlap(report, examples, train_prompts)
        reports.append(report)
    return reports


def _check_one(
    channel: str, uri: str | Path, count_tokens: Callable[[Example], int] | None, max_seq_len: int | None
) -> tuple[DatasetReport, list[Example]]:
    report = DatasetReport(path=str(uri), channel=channel)
    if "://" in str(uri):
        report.checked = False
        report.warnings.append(f"{uri}: a remote dataset is not read here; the training job validates it before training")
        return report, []
    try:
        report.files = [str(p) for p in dataset_files(uri)]
    except NotFoundError as exc:
        report.errors.append(str(exc))
        return report, []
    examples = list(iter_examples(uri, allow_text=channel == "general_eval", errors=report.errors))
    report.examples = len(examples)
    report.formats = sorted({e.fmt for e in examples})
    if not examples and not report.errors:
        report.errors.append(f"{uri}: the dataset holds no examples. To fix: add JSONL lines, one example a line")
    first_seen: dict[str, Example] = {}
    first_duplicate = first_near_empty = None
    for example in examples:
        seen = first_seen.setdefault(example.key(), example)
        if seen is not example:
            report.duplicates += 1
            first_duplicate = first_duplicate or (example, seen)
        if _near_empty(example):
            report.near_empty += 1
            first_near_empty = first_near_empty or example
    if first_duplicate:
        dup, seen = first_duplicate
        report.warnings.append(
            f"{dup.source}:{dup.line}: duplicate of line {seen.line}"
            + (f" of {seen.source}" if seen.source != dup.source else "")
            + f" ({report.duplicates} duplicate example{'s' if report.duplicates != 1 else ''} in all). "
            "To fix: remove the repeats, they weigh those examples double"
        )
    if first_near_empty:
        report.warnings.append(
            f"{first_near_empty.source}:{first_near_empty.line}: near-empty example "
            f"({report.near_empty} in all have a prompt or answer with fewer than {NEAR_EMPTY_ALNUM} letters or digits). "
            "To fix: fill them in or remove them"
        )
    if count_tokens is not None:
        report.token_lengths = [int(count_tokens(e)) for e in examples]
        if max_seq_len:
            over = [(e, n) for e, n in zip(examples, report.token_lengths) if n > max_seq_len]
            report.over_max_seq_len = len(over)
            if over:
                e, n = over[0]
                report.warnings.append(
                    f"{e.source}:{e.line}: {n} tokens, over max_seq_len {max_seq_len} "
                    f"({len(over)} of {len(examples)} examples will be truncated). "
                    "To fix: raise training.max_seq_len or shorten those examples"
                )
    if channel == "train" and 0 < len(examples) < MIN_RECOMMENDED_EXAMPLES:
        report.warnings.append(
            f"{uri}: only {len(examples)} training examples; about {MIN_RECOMMENDED_EXAMPLES:,} are usually needed "
            "for a noticeable improvement. To fix: add more examples"
        )
    return report, examples


def _check_overlap(report: DatasetReport, examples: list[Example], train_prompts: dict[str, str]) -> None:
    first = None
    for example in examples:
        match = train_prompts.get(_prompt_key(example))
        if match:
            report.overlap_with_train += 1
            first = first or (example, match)
    if first:
        example, match = first
        report.warnings.append(
            f"{example.source}:{example.line}: the same prompt is in the training set at {match} "
            f"({report.overlap_with_train} of {len(examples)} {report.channel} examples overlap with train), "
            "so eval scores overstate the model. To fix: remove them from one of the two sets"
        )


def _prompt_key(example: Example) -> str:
    if example.text is not None:
        return example.key()
    return " ".join("\x1e".join(f"{r}\x1f{c.strip()}" for r, c in example.prompt).lower().split())


def _near_empty(example: Example) -> bool:
    def alnum(text: str) -> int:
        return sum(ch.isalnum() for ch in text)

    if example.text is not None:
        return alnum(example.text) < NEAR_EMPTY_ALNUM
    user = " ".join(c for r, c in example.prompt if r == "user")
    return alnum(example.reference) < NEAR_EMPTY_ALNUM or alnum(user) < NEAR_EMPTY_ALNUM
