"""The bundled base model: loads with plain transformers, answers a fair share of held-out problems (far
from all), and rarely uses the R1 format unprompted -- room for the R1 stages to show what they do."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.data import make_split, render_prompt
from alignkit.models import BUNDLED_DIR
from alignkit.rewards import answers_match, extract_answer, format_reward
from alignkit.rollout import generate


def test_bundled_base_model_is_small_loadable_and_leaves_room():
    size = sum(f.stat().st_size for f in BUNDLED_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_DIR)
    tok = AutoTokenizer.from_pretrained(BUNDLED_DIR)
    card = json.loads((BUNDLED_DIR / "alignkit_base.json").read_text())
    _, held_out = make_split(card["n_train"], 200, level=card["levels"], seed=card["seed"] + 1000)
    out = generate(model, tok, [render_prompt(tok, p.question) for p in held_out], num_samples=1,
                   max_new_tokens=48, temperature=0.0)
    correct = [answers_match(extract_answer(c) or c.split("=")[-1], str(p.answer))
               for c, p in zip(out.completions, held_out)]
    accuracy = sum(correct) / len(held_out)
    assert 0.10 <= accuracy <= 0.50
    assert accuracy == card["held_out_greedy_accuracy"]  # the model card's number is this measurement
    assert sum(format_reward(c) for c in out.completions) / len(held_out) <= 0.05
