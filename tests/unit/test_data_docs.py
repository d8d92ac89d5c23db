"""Every JSONL example in docs/data.md loads as the kind its code fence names and renders with a real chat
template (the docs' examples cannot drift from what the loader accepts)."""

import json
import re
from pathlib import Path

import pytest

from alignkit.data import load_records, render_preference, render_prompt, render_sft
from alignkit.models.tiny import build_tiny_tokenizer

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
BLOCKS = re.findall(r"```jsonl (\w+)(?: columns=(\{.*?\}))?\n(.*?)```", DOC.read_text(), flags=re.S)
RENDER = {"sft": render_sft, "preference": render_preference, "prompt": render_prompt}


def test_the_doc_has_an_example_of_every_kind():
    assert {kind for kind, _, _ in BLOCKS} == set(RENDER) and len(BLOCKS) >= 9


@pytest.mark.parametrize("kind, columns, body", BLOCKS, ids=[f"{i}-{b[0]}" for i, b in enumerate(BLOCKS)])
def test_doc_example_loads_and_renders(tmp_path, kind, columns, body):
    path = tmp_path / "data.jsonl"
    path.write_text(body)
    records = load_records(path, kind, columns=json.loads(columns) if columns else None)
    assert len(records) == len(body.strip().splitlines())
    tok = build_tiny_tokenizer()
    for rec in records:
        assert RENDER[kind](tok, rec)
        if kind == "preference":  # never a turn twice
            chosen, _ = render_preference(tok, rec)
            assert tok.decode(chosen.input_ids).count("What color is the sky?") <= 1
