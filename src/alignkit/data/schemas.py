"""Typed dataset records and their validation.

Four kinds of rows, validated when they are loaded (``alignkit.data.loading``); every error is a
``DataError`` naming the file, the 1-based row and the field::

    data/train.jsonl, row 7, field 'completion': must be a non-empty string (got '')

- ``SFTRecord``: exactly one form (TRL's language-modeling and prompt-completion types)
    * ``prompt`` + ``completion``: prompt a non-empty string (or a list of chat messages), completion a
      non-empty string or a list of chat messages (conversational); the loss covers the completion and
      its EOS.
    * ``messages``: a list of ``{"role": "system"|"user"|"assistant", "content": str}`` with at least one
      assistant turn of non-empty content; the loss covers assistant turns.
    * ``text``: a non-empty string; plain language-model text, the loss covers every token.
- ``PreferenceRecord``: ``prompt``, ``chosen``, ``rejected``, each a non-empty string or a list of chat
  messages (``chosen`` / ``rejected`` as messages are the continuation after the prompt). Without a
  ``prompt`` field the prompt is implicit: the shared leading messages (or, for strings, the shared
  leading text, as TRL's ``extract_prompt`` splits it) of ``chosen`` and ``rejected``.
- ``UnpairedRecord`` (KTO; TRL's unpaired preference type): ``prompt``, ``completion`` (each a non-empty
  string or chat messages) and ``label``, a bool (True = desirable). :func:`unpaired_from_pairs` splits
  preference records into two unpaired ones each (chosen True, rejected False).
- ``PromptRecord`` (RL): ``prompt`` (string or messages); every other field (``answer``, ``tests``,
  ``level``, ...) is kept in ``extra`` and passed to reward functions as keyword arguments.

A turn is never rendered twice: a conversational ``completion`` / ``chosen`` / ``rejected`` that repeats
the prompt's turns first (the UltraFeedback-binarized shape: a string prompt and full conversations that
start with it as the user turn) keeps only what follows the prompt (``drop_repeated_prompt``).

Messages: keys whose value is None (``tool_calls: null``, ``name: null``: ``datasets`` adds them when
rows of one table differ) are dropped; any other key but ``role`` / ``content`` is an error. ShareGPT
messages (``{"from": "human"|"gpt"|"system", "value": ...}``) are read as ``{"role", "content"}``.

Fields other than the ones above are kept in ``extra`` for every kind. A field whose value is None
(a missing cell in a parquet file or a ``datasets`` table) counts as absent. Records are frozen
dataclasses; ``source`` and ``row`` say where a record came from (``"<records>"`` for in-memory rows)
and take no part in equality.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
KINDS = ("sft", "preference", "prompt", "unpaired")
IN_MEMORY = "<records>"

Message = dict[str, str]
Chat = list[Message]


class DataError(ValueError):
    """Invalid data. The message names the file, the 1-based row and, where one applies, the field."""

    def __init__(self, source: str, row: int | None, field: str | None, message: str):
        self.source, self.row, self.field = source, row, field
        where = source if row is None else f"{source}, row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class SFTRecord:
    """One supervised example; exactly one of (prompt, completion), messages, text is set."""

    prompt: str | Chat | None = None
    completion: str | Chat | None = None
    messages: Chat | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default=IN_MEMORY, compare=False)
    row: int = field(default=0, compare=False)

    @property
    def form(self) -> Literal["prompt_completion", "messages", "text"]:
        if self.messages is not None:
            return "messages"
        return "text" if self.text is not None else "prompt_completion"

    def to_dict(self) -> dict[str, Any]:
        names = {"prompt_completion": ("prompt", "completion"), "messages": ("messages",), "text": ("text",)}
        return {**{k: getattr(self, k) for k in names[self.form]}, **self.extra}


@dataclass(frozen=True)
class PreferenceRecord:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: str | Chat
    chosen: str | Chat
    rejected: str | Chat
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default=IN_MEMORY, compare=False)
    row: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}


@dataclass(frozen=True)
class PromptRecord:
    """An RL prompt; ``extra`` holds the ground truth (``answer``, ``tests``, ...) for reward functions,
    which are called as ``fn(completion, **record.extra)``."""

    prompt: str | Chat
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default=IN_MEMORY, compare=False)
    row: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, **self.extra}


@dataclass(frozen=True)
class UnpairedRecord:
    """A prompt with one response and whether it is desirable (``label``; KTO)."""

    prompt: str | Chat
    completion: str | Chat
    label: bool
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default=IN_MEMORY, compare=False)
    row: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label, **self.extra}


Record = SFTRecord | PreferenceRecord | PromptRecord | UnpairedRecord


class _Row:
    """A raw row being validated: its fields (None values dropped) and where it came from."""

    def __init__(self, raw: Any, source: str, row: int):
        self.source, self.row = source, row
        if not isinstance(raw, Mapping):
            raise DataError(source, row, None, f"expected an object with named fields (got {_show(raw)})")
        self.fields = {str(k): v for k, v in raw.items() if v is not None}

    def error(self, name: str | None, message: str) -> DataError:
        return DataError(self.source, self.row, name, message)

    def has(self, name: str) -> bool:
        return name in self.fields

    def string(self, name: str) -> str:
        value = self.fields.get(name)
        if name not in self.fields:
            raise self.error(name, "missing")
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string (got {_show(value)})")
        return value

    def chat(self, name: str, *, need_assistant: bool) -> Chat:
        return _validate_chat(self, name, self.fields.get(name), need_assistant=need_assistant)

    def text_or_chat(self, name: str, *, need_assistant: bool) -> str | Chat:
        if name not in self.fields:
            raise self.error(name, "missing")
        if isinstance(self.fields[name], list):
            return self.chat(name, need_assistant=need_assistant)
        value = self.fields[name]
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string or a list of chat messages (got {_show(value)})")
        return value

    def extra(self, *known: str) -> dict[str, Any]:
        return {k: v for k, v in self.fields.items() if k not in known}


def _show(value: Any) -> str:
    """Short description of a bad value for error messages: repr (cut at 60 chars), type if not a str."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, str) else f"{type(value).__name__} {text}"


def _message(row: _Row, where: str, msg: Any) -> Message:
    """One message -> {role, content}: None-valued keys dropped, ShareGPT's from/value read as role/content."""
    if not isinstance(msg, Mapping):
        raise row.error(where, f"must be an object with 'role' and 'content' (got {_show(msg)})")
    msg = {k: v for k, v in msg.items() if v is not None}
    if "role" not in msg and "content" not in msg and set(msg) == {"from", "value"}:  # ShareGPT
        if msg["from"] not in SHAREGPT_ROLES:
            raise row.error(f"{where}.from", f"must be one of {list(SHAREGPT_ROLES)} (ShareGPT; got {_show(msg['from'])})")
        msg = {"role": SHAREGPT_ROLES[msg["from"]], "content": msg["value"]}
    unknown = sorted(set(msg) - {"role", "content"})
    if unknown:
        raise row.error(where, f"unknown key(s) {unknown}; a message has only 'role' and 'content' "
                               "(keys whose value is null are dropped)")
    role, content = msg.get("role"), msg.get("content")
    if role not in ROLES:
        raise row.error(f"{where}.role", f"must be one of {list(ROLES)} (got {_show(role)})")
    if not isinstance(content, str):
        raise row.error(f"{where}.content", f"must be a string (got {_show(content)})")
    return {"role": role, "content": content}


def _has_reply(chat: Chat) -> bool:
    return any(m["role"] == "assistant" and m["content"] for m in chat)


def _validate_chat(row: _Row, name: str, value: Any, *, need_assistant: bool) -> Chat:
    """A list of {role, content} messages; with ``need_assistant`` one assistant turn must have content."""
    if not isinstance(value, list) or not value:
        raise row.error(name, f"must be a non-empty list of chat messages (got {_show(value)})")
    chat = [_message(row, f"{name}[{i}]", msg) for i, msg in enumerate(value)]
    if need_assistant and not _has_reply(chat):
        raise row.error(name, "needs at least one assistant message with non-empty content")
    return chat


def as_chat(prompt: str | Chat) -> Chat:
    """A prompt as messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _same_turn(a: Message, b: Message) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def drop_repeated_prompt(prompt: str | Chat, response: str | Chat) -> str | Chat:
    """A conversational response that starts with the prompt's turns -> the turns after them; anything else
    unchanged. (UltraFeedback-binarized rows: ``prompt`` is the user's text and ``chosen`` is the whole
    conversation ``[user, assistant]``; rendered as is, the user turn would appear twice.) Turns match on
    role and on content up to surrounding whitespace.

    >>> drop_repeated_prompt("hi", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    [{'role': 'assistant', 'content': 'yo'}]
    """
    if isinstance(response, str):
        return response
    turns = as_chat(prompt)
    n = len(turns)
    if len(response) > n and all(_same_turn(a, b) for a, b in zip(turns, response[:n])):
        return list(response[n:])
    return response


def _response(row: _Row, name: str, prompt: str | Chat, value: str | Chat) -> str | Chat:
    """A validated response (``completion`` / ``chosen`` / ``rejected``) with a repeated prompt dropped; a
    conversational one must then begin with an assistant turn (unless the prompt ends with one)."""
    value = drop_repeated_prompt(prompt, value)
    if isinstance(value, str):
        return value
    if not _has_reply(value):
        raise row.error(name, "has no assistant message with non-empty content after the turns that repeat 'prompt'")
    if value[0]["role"] == "assistant" or as_chat(prompt)[-1]["role"] == "assistant":
        return value
    raise row.error(name, f"starts with a {value[0]['role']!r} message that does not repeat 'prompt'; after the "
                          "prompt a response starts with an assistant turn (or repeats the whole prompt first)")


def _common_prefix(a: str | Chat, b: str | Chat) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _implicit_prompt(r: _Row) -> tuple[str | Chat, str | Chat, str | Chat]:
    """No ``prompt`` field: the prompt is the shared start of ``chosen`` and ``rejected`` (TRL's
    ``extract_prompt``: leading messages that are equal; for strings the leading characters, a space just
    before the split going with the responses) -> (prompt, chosen, rejected)."""
    chosen = r.text_or_chat("chosen", need_assistant=True)
    rejected = r.text_or_chat("rejected", need_assistant=True)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise r.error(None, "no 'prompt' field, and 'chosen' and 'rejected' are not both strings or both chat "
                            "messages, so no shared prompt can be taken from them")
    n = _common_prefix(chosen, rejected)
    if isinstance(chosen, str) and 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    what = "text" if isinstance(chosen, str) else "messages"
    if n == 0:
        raise r.error(None, f"no 'prompt' field, and 'chosen' and 'rejected' share no leading {what} to take as "
                            "the prompt (implicit prompt); add a 'prompt' field")
    prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value or (isinstance(value, list) and not _has_reply(value)):
            raise r.error(name, f"nothing to learn from after the prompt shared with the other response "
                                f"(implicit prompt: the {what} both start with); the two must differ in an "
                                "assistant turn")
    return prompt, chosen, rejected


def parse_sft(raw: Any, *, source: str = IN_MEMORY, row: int = 0) -> SFTRecord:
    """Validate one SFT row (a mapping) -> SFTRecord; raises DataError naming source, row and field."""
    r = _Row(raw, source, row)
    forms = [f for f, keys in (("prompt/completion", ("prompt", "completion")), ("messages", ("messages",)),
                               ("text", ("text",))) if any(r.has(k) for k in keys)]
    if not forms:
        found = ", ".join(repr(k) for k in r.fields) or "none"
        raise r.error(None, "no SFT form: expected fields 'prompt'+'completion', 'messages' or 'text' "
                            f"(found: {found}); map other columns with data.columns, e.g. "
                            "{question: prompt, conversations: messages}")
    if len(forms) > 1:
        raise r.error(None, f"fields of more than one SFT form present ({' and '.join(forms)}); "
                            "a row has exactly one of 'prompt'+'completion', 'messages', 'text'")
    meta = dict(source=source, row=row)
    if forms[0] == "messages":
        return SFTRecord(messages=r.chat("messages", need_assistant=True), extra=r.extra("messages"), **meta)
    if forms[0] == "text":
        return SFTRecord(text=r.string("text"), extra=r.extra("text"), **meta)
    if r.has("prompt") and not r.has("completion"):
        raise r.error("completion", "missing (a prompt-only row is RL data for GRPO/PPO; SFT needs a 'completion')")
    prompt = r.text_or_chat("prompt", need_assistant=False)
    if isinstance(r.fields.get("completion"), list):
        completion = _response(r, "completion", prompt, r.chat("completion", need_assistant=True))
    else:
        completion = r.string("completion")
    return SFTRecord(prompt=prompt, completion=completion, extra=r.extra("prompt", "completion"), **meta)


def parse_preference(raw: Any, *, source: str = IN_MEMORY, row: int = 0) -> PreferenceRecord:
    """Validate one preference row -> PreferenceRecord; raises DataError naming source, row and field."""
    r = _Row(raw, source, row)
    if r.has("label") and r.has("completion") and not (r.has("chosen") or r.has("rejected")):
        raise r.error(None, "an unpaired preference row (prompt, completion, label: TRL's KTO format) has no "
                            "pair to compare; the reward model and DPO need 'chosen' and 'rejected'")
    if r.has("prompt"):
        prompt = r.text_or_chat("prompt", need_assistant=False)
        chosen, rejected = (_response(r, name, prompt, r.text_or_chat(name, need_assistant=True))
                            for name in ("chosen", "rejected"))
    else:
        prompt, chosen, rejected = _implicit_prompt(r)
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected,
                            extra=r.extra("prompt", "chosen", "rejected"), source=source, row=row)


def parse_prompt(raw: Any, *, source: str = IN_MEMORY, row: int = 0) -> PromptRecord:
    """Validate one RL prompt row -> PromptRecord. A ground-truth field may not be called 'completion':
    reward functions receive the sampled completion under that name."""
    r = _Row(raw, source, row)
    prompt = r.text_or_chat("prompt", need_assistant=False)
    if r.has("completion"):
        raise r.error("completion", "not allowed in a prompt row: reward functions receive the sampled "
                                    "completion under that name; rename the field")
    return PromptRecord(prompt=prompt, extra=r.extra("prompt"), source=source, row=row)


def parse_unpaired(raw: Any, *, source: str = IN_MEMORY, row: int = 0) -> UnpairedRecord:
    """Validate one unpaired preference row (prompt, completion, label) -> UnpairedRecord."""
    r = _Row(raw, source, row)
    if r.has("chosen") or r.has("rejected"):
        raise r.error(None, "a paired preference row (chosen, rejected) where an unpaired one (prompt, completion, "
                            "label) is expected; set data.from_pairs: true to split each pair into two rows")
    prompt = r.text_or_chat("prompt", need_assistant=False)
    completion = _response(r, "completion", prompt, r.text_or_chat("completion", need_assistant=True))
    if not r.has("label"):
        raise r.error("label", "missing (true = a desirable completion, false = an undesirable one)")
    label = r.fields["label"]
    if not isinstance(label, bool):
        raise r.error("label", f"must be true or false (got {_show(label)})")
    return UnpairedRecord(prompt=prompt, completion=completion, label=label,
                          extra=r.extra("prompt", "completion", "label"), source=source, row=row)


def unpaired_from_pairs(records) -> list[UnpairedRecord]:
    """Preference records (or rows) -> two unpaired records each: (prompt, chosen, True), (prompt, rejected,
    False), in order; ``extra`` and where the pair came from are kept.

    >>> [(u.completion, u.label) for u in unpaired_from_pairs([{"prompt": "2+2", "chosen": "4", "rejected": "5"}])]
    [('4', True), ('5', False)]
    """
    out = []
    for i, raw in enumerate(records, start=1):
        rec = parse_record("preference", raw, row=i)
        for completion, label in ((rec.chosen, True), (rec.rejected, False)):
            out.append(UnpairedRecord(rec.prompt, completion, label, dict(rec.extra), rec.source, rec.row))
    return out


_PARSERS = {"sft": parse_sft, "preference": parse_preference, "prompt": parse_prompt, "unpaired": parse_unpaired}
_TYPES = {"sft": SFTRecord, "preference": PreferenceRecord, "prompt": PromptRecord, "unpaired": UnpairedRecord}


def parse_record(kind: str, raw: Any, *, source: str = IN_MEMORY, row: int = 0) -> Record:
    """Validate a row of ``kind`` ('sft', 'preference', 'prompt' or 'unpaired'); a record of that kind passes through."""
    if kind not in _PARSERS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {list(KINDS)}")
    if isinstance(raw, _TYPES[kind]):
        return raw
    if isinstance(raw, (SFTRecord, PreferenceRecord, PromptRecord, UnpairedRecord)):
        raise TypeError(f"expected a {kind} record or a mapping, got {type(raw).__name__}")
    return _PARSERS[kind](raw, source=source, row=row)
