"""The bundled base model: loads with plain transformers, answers a fair share of held-out problems (far
from all), and rarely uses the R1 format unprompted -- room for the R1 stages to show what they do."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.evaluation import arithmetic_eval_set, evaluate_model
from alignkit.models import BUNDLED_DIR


def test_bundled_base_model_is_small_loadable_and_leaves_room():
    size = sum(f.stat().st_size for f in BUNDLED_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_DIR)
    tok = AutoTokenizer.from_pretrained(BUNDLED_DIR)
    card = json.loads((BUNDLED_DIR / "alignkit_base.json").read_text())
    scores = evaluate_model(model, tok, arithmetic_eval_set())
    assert 0.10 <= scores["accuracy"] <= 0.50
    assert scores["accuracy"] == card["held_out_greedy_accuracy"]  # the model card's number is this measurement
    assert scores["format"] <= 0.05
