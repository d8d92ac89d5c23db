"""The real-model tier (`make test-real`): every recipe runs a few steps on SmolLM2-135M-Instruct, built once by
`make real-model` (scripts/build_real_model.py) into ``$ALIGNKIT_CACHE`` (default ~/.cache/alignkit).

Outside `make test-real` a missing model skips these tests; under it (ALIGNKIT_REQUIRE_REAL=1) it is a failure,
so CI can never pass the tier without running it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_script():
    spec = importlib.util.spec_from_file_location("build_real_model", ROOT / "scripts" / "build_real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    script = _build_script()
    d = script.model_dir()
    if not (d / ".complete").is_file():
        message = f"the real model is not built ({d}): run `make real-model`"
        if os.environ.get("ALIGNKIT_REQUIRE_REAL"):
            pytest.fail(message)
        pytest.skip(message)
    return d


@pytest.fixture(scope="session")
def real_gguf(real_model_dir) -> Path:
    return real_model_dir / "gguf" / _build_script().GGUF_NAME


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    """(model, tokenizer) loaded once per session; tests must not train it in place."""
    from alignkit.models import load_causal_lm, load_tokenizer

    return load_causal_lm(real_model_dir), load_tokenizer(real_model_dir)


def chat_prompts_file(path: Path, n: int = 8, *, seed: int = 0) -> Path:
    """Two-digit additions asked in words as chat messages, with the answer as a reward field."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}? Answer with the number."}],
                     "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_answers_through_its_template(final_dir: Path) -> str:
    """Plain transformers loads ``final_dir`` and answers a chat prompt through its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final_dir)
    model = AutoModelForCausalLM.from_pretrained(final_dir)
    assert tok.chat_template, f"{final_dir}: the saved tokenizer has no chat template"
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip(), f"{final_dir}: empty answer"
    return text
