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
from collections.abc import Iterator
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
    """The JSONL files of a dataset: a file, or every ``*.jsonl`` in a folder (a SageMaker channel)."""
    path = Path(uri)
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
        line = raw.decode("utf-8")
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
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty. To fix: fill it in or remove the line")
    return value


def _messages(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    turns = []
    for index, message in enumerate(value):
        at = f"{where}: messages[{index}]"
        if not isinstance(message, dict):
            raise DataError(f"{at} must be an object with 'role' and 'content'")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise DataError(f"{at}: unknown field '{extra[0]}'.{did_you_mean(extra[0], ['role', 'content'])} To fix: use only role and content")
        role = message.get("role")
        if role not in ROLES:
            hint = did_you_mean(str(role), ROLES) if isinstance(role, str) else ""
            raise DataError(f"{at}: unknown role {role!r}.{hint} To fix: use one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"{at}: 'content' must be a string, got {type(content).__name__}")
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
        raise DataError(f"{where}: messages[{roles.index('system', 1)}]: a system message may only come first")
    for index, role in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            position = index + (len(roles) - len(body))
            raise DataError(
                f"{where}: messages[{position}] is '{role}' but '{expected}' was expected (user and assistant turns alternate, user first)"
            )
    if body[-1] != "assistant":
        raise DataError(f"{where}: the last turn is 'user'; an example must end with an assistant turn. To fix: add the answer or drop the turn")


# --- dataset-level checks (launcher validate) -------------------------------------------------------
MIN_RECOMMENDED_EXAMPLES = 1000


@dataclass
class DatasetReport:
    """What ``launcher validate`` says about one dataset."""

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

    @property
    def ok(self) -> bool:
        return not self.errors
