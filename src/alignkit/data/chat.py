"""Render records to token ids and a response mask with the tokenizer's own chat template.

Works for any transformers tokenizer that has a chat template (the tiny tokenizer, Qwen, Llama, ...):
nothing here knows the template's strings. ``response_mask[t]`` refers to ``input_ids[t]``: 1 if token t
is a target (counts in the loss), else 0. Position 0 can never be predicted; the loss code handles it.

- prompt/completion: the prompt is a user turn (or the given messages) plus the generation prompt, all 0;
  the completion tokens and the EOS that ends the assistant turn are 1.
- messages: each assistant turn's content and its end-of-turn tokens are 1, everything else 0.
- text: plain tokenization (the tokenizer's own special tokens, e.g. BOS) + EOS, all 1.

Conversations are rendered prefix-incrementally: turn i is the difference between the template applied to
``messages[:i+1]`` and to ``messages[:i]`` (with the generation prompt before an assistant turn), and the
earlier rendering must be a prefix of the later one; a template that is not prefix-stable (e.g. one that
rewrites earlier turns) is an error. In a trained assistant turn, tokens after the last EOS (a template's
trailing newline) are 0; if the template puts no EOS after the final assistant turn, ``eos_token_id`` is
appended and is 1.

Plain ``text`` needs no chat template; every other form does, and a tokenizer without one is an error
that says to set ``model.chat_template``. A conversational response that repeats the prompt's turns is
rendered once (``schemas.drop_repeated_prompt``), for records built in code as for rows read from files.

Over-long examples (``max_length``): ``on_overflow="error"`` (default) raises a DataError naming the row,
``"drop"`` returns None, ``"truncate"`` keeps the first ``max_length`` tokens (None if no target is left).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alignkit.data.schemas import (
    IN_MEMORY,
    Chat,
    DataError,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    as_chat,
    drop_repeated_prompt,
    parse_record,
)

logger = logging.getLogger(__name__)

OVERFLOW = ("error", "drop", "truncate")


@dataclass
class RenderedExample:
    """One tokenized example. ``input_ids`` [T] and ``response_mask`` [T] (1 = target token) align."""

    input_ids: list[int]
    response_mask: list[int]

    def __post_init__(self):
        if len(self.input_ids) != len(self.response_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and response_mask "
                             f"({len(self.response_mask)}) differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)


NO_TEMPLATE = "the tokenizer has no chat template: set model.chat_template (a Jinja file or string)"


def _check_tokenizer(tokenizer, *, chat: bool = True) -> None:
    """Raise if the tokenizer cannot render: no EOS, or (``chat``) no chat template."""
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(NO_TEMPLATE)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token")


def _template_ids(tokenizer, messages: Chat, *, add_generation_prompt: bool) -> list[int]:
    """Token ids of the chat template applied to ``messages`` (special tokens come from the template)."""
    if not messages:
        return []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _extend(ids: list[int], mask: list[int], new: list[int], where: tuple[str, int], turn: int) -> None:
    """Append the part of ``new`` beyond ``ids`` (mask 0); ``ids`` must be a prefix of ``new``."""
    if new[: len(ids)] != ids:
        raise ValueError(f"{where[0]}, row {where[1]}: the chat template is not prefix-stable at message "
                         f"{turn}: rendering the conversation up to that message changes the tokens of the "
                         "earlier messages, so per-turn loss masks cannot be derived")
    mask.extend([0] * (len(new) - len(ids)))
    ids.extend(new[len(ids):])


def _target_span_mask(span: list[int], eos_id: int) -> list[int]:
    """Mask of a trained assistant turn: 1 through its last EOS, 0 after (e.g. a trailing newline)."""
    if eos_id not in span:
        return [1] * len(span)
    last = len(span) - 1 - span[::-1].index(eos_id)
    return [1] * (last + 1) + [0] * (len(span) - last - 1)


def _render_chat(tokenizer, messages: Chat, *, train_from: int, where: tuple[str, int]) -> RenderedExample:
    """Render a conversation; assistant turns with index >= ``train_from`` are targets (see module doc)."""
    _check_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    mask: list[int] = []
    for i, msg in enumerate(messages):
        trained = msg["role"] == "assistant" and i >= train_from
        if trained:
            _extend(ids, mask, _template_ids(tokenizer, messages[:i], add_generation_prompt=True), where, i)
        start = len(ids)
        _extend(ids, mask, _template_ids(tokenizer, messages[: i + 1], add_generation_prompt=False), where, i)
        if trained:
            mask[start:] = _target_span_mask(ids[start:], eos)
            if i == len(messages) - 1 and eos not in ids[start:]:
                ids.append(eos)
                mask.append(1)
    return RenderedExample(ids, mask)


def _as_reply(response: str | Chat) -> Chat:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)


def _where(record: Any) -> tuple[str, int]:
    """(source, row) of a record, for error messages."""
    return getattr(record, "source", IN_MEMORY), getattr(record, "row", 0)


def _fit(example: RenderedExample, max_length: int | None, on_overflow: str, where: tuple[str, int], *,
         remedy: str = "set on_overflow='drop' or 'truncate'"):
    """Apply the overflow policy -> the example, a truncated copy, or None (dropped)."""
    if on_overflow not in OVERFLOW:
        raise ValueError(f"on_overflow must be one of {list(OVERFLOW)} (got {on_overflow!r})")
    if max_length is None or len(example) <= max_length:
        return example
    if on_overflow == "error":
        raise DataError(*where, None, f"example is {len(example)} tokens, longer than max_length="
                        f"{max_length}; raise max_length or {remedy}")
    if on_overflow == "drop":
        return None
    cut = RenderedExample(example.input_ids[:max_length], example.response_mask[:max_length])
    return cut if any(cut.response_mask) else None


def render_sft(
    tokenizer, record: SFTRecord | Mapping[str, Any], *, max_length: int | None = None, on_overflow: str = "error",
) -> RenderedExample | None:
    """SFT record (or a dict that passes the SFT schema) -> RenderedExample [T]; None if dropped."""
    rec = parse_record("sft", record)
    where = _where(rec)
    if rec.form == "text":
        _check_tokenizer(tokenizer, chat=False)
        ids = list(tokenizer.encode(rec.text, add_special_tokens=True))
        if ids[-1:] != [tokenizer.eos_token_id]:
            ids.append(tokenizer.eos_token_id)
        example = RenderedExample(ids, [1] * len(ids))
    elif rec.form == "messages":
        example = _render_chat(tokenizer, rec.messages, train_from=0, where=where)
    else:
        prompt = as_chat(rec.prompt)
        reply = _as_reply(drop_repeated_prompt(prompt, rec.completion))
        example = _render_chat(tokenizer, prompt + reply, train_from=len(prompt), where=where)
    return _fit(example, max_length, on_overflow, where)


def render_prompt(
    tokenizer, prompt: str | Chat | PromptRecord, *, max_length: int | None = None, on_overflow: str = "error",
) -> list[int] | None:
    """Chat-templated prompt ending with the generation prompt, for sampling -> ids [T]; None if dropped.

    ``on_overflow`` is 'error' or 'drop' (a prompt is never truncated: that would cut the generation prompt).
    """
    if on_overflow == "truncate":
        raise ValueError("prompts are never truncated; use on_overflow='error' or 'drop'")
    _check_tokenizer(tokenizer)
    where = _where(prompt)
    if isinstance(prompt, (PromptRecord, Mapping)):
        prompt = parse_record("prompt", prompt).prompt
    ids = _template_ids(tokenizer, as_chat(prompt), add_generation_prompt=True)
    example = _fit(RenderedExample(ids, [0] * len(ids)), max_length, on_overflow, where,
                   remedy="set on_overflow='drop' (a prompt is never truncated)")
    return None if example is None else example.input_ids


def render_preference(
    tokenizer, record: PreferenceRecord | Mapping[str, Any], *, max_length: int | None = None,
    on_overflow: str = "error",
) -> tuple[RenderedExample, RenderedExample] | None:
    """Preference record -> (chosen, rejected), both starting with the same rendered prompt; the masks
    cover only the responses. None if dropped (either side over ``max_length`` drops the pair)."""
    rec = parse_record("preference", record)
    where = _where(rec)
    prompt = as_chat(rec.prompt)
    pair = [_render_chat(tokenizer, prompt + _as_reply(drop_repeated_prompt(prompt, r)), train_from=len(prompt),
                         where=where)
            for r in (rec.chosen, rec.rejected)]
    fitted = [_fit(p, max_length, on_overflow, where) for p in pair]
    return None if any(f is None for f in fitted) else (fitted[0], fitted[1])


_RENDERERS = {"sft": render_sft, "preference": render_preference, "prompt": render_prompt}


def render_many(
    tokenizer, records: Iterable[Any], *, kind: str = "sft", max_length: int | None = None,
    on_overflow: str = "error",
) -> tuple[list[Any], int]:
    """Render a list of records of ``kind`` -> (rendered, n_dropped). A dropped count > 0 is logged.

    Items are RenderedExample (sft), (chosen, rejected) pairs (preference) or id lists (prompt). Dicts
    are validated first; their row numbers are their 1-based positions in ``records``.
    """
    if kind not in _RENDERERS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(_RENDERERS)}")
    rendered, dropped = [], 0
    for i, rec in enumerate(records, start=1):
        if kind == "prompt" and isinstance(rec, (str, list)):  # a bare prompt needs no schema, only its row
            rec = PromptRecord(prompt=rec, row=i)
        else:
            rec = parse_record(kind, rec, row=i)
        out = _RENDERERS[kind](tokenizer, rec, max_length=max_length, on_overflow=on_overflow)
        if out is None:
            dropped += 1
        else:
            rendered.append(out)
    if dropped:
        logger.warning("dropped %d of %d %s examples longer than max_length=%s (on_overflow=%r)",
                       dropped, dropped + len(rendered), kind, max_length, on_overflow)
    return rendered, dropped
