"""RunLogger's W&B run (project, entity, tags and the resolved config from output.*), CompletionLog (sampled
completions per step to completions.jsonl, TensorBoard text and a wandb.Table) and the curves grid. W&B is a
fake module in sys.modules: nothing is installed or sent."""

import json
import math
import sys
import types

import pytest

from alignkit.config import load_config, to_yaml
from alignkit.infra.logging import CompletionLog, RunLogger, plot_metrics, read_metrics
from alignkit.recipes.grpo import GRPOConfig


class FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.finished = init, [], False

    def log(self, data, step=None):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


@pytest.fixture
def wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init, module.Table = init, FakeTable
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


class FakeWriter:
    def __init__(self):
        self.texts = []

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_wandb_gets_project_entity_tags_and_the_resolved_config(tmp_path, wandb):
    cfg = load_config(GRPOConfig, None, ["output.wandb=true", "output.wandb_project=proj", "output.wandb_entity=team",
                                         "output.wandb_tags=[tiny, arith]", "rollout.group_size=4"])
    logger = RunLogger.from_config(tmp_path / "grpo", cfg)
    logger.log(1, {"loss": 0.5})
    logger.close()
    (run,) = wandb.runs
    assert run.init["project"] == "proj" and run.init["entity"] == "team" and run.init["tags"] == ["tiny", "arith"]
    assert run.init["config"] == cfg.model_dump(mode="json") and run.init["config"]["rollout"]["group_size"] == 4
    assert run.init["name"] == "grpo" and run.logged == [(1, {"loss": 0.5})] and run.finished


def test_without_output_wandb_no_run_starts(tmp_path, wandb):
    cfg = load_config(GRPOConfig, None, ["output.tensorboard=false"])
    assert cfg.output.wandb is False and cfg.output.wandb_project == "alignkit"
    assert cfg.output.wandb_entity is None and cfg.output.wandb_tags == []
    RunLogger.from_config(tmp_path / "r", cfg).close()
    assert wandb.runs == []


def test_the_config_a_recipe_wrote_reaches_wandb_and_a_stage_is_named_after_its_pipeline(tmp_path, wandb):
    """RunLogger(..., wandb_project=...) without config= reads the resolved config.yaml of the run directory."""
    cfg = load_config(GRPOConfig, None, ["output.wandb_entity=me", "output.wandb_tags=[x]", "output.wandb_project=p"])
    run_dir = tmp_path / "r1" / "r1_zero" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    RunLogger(run_dir, tensorboard=False, wandb_project="alignkit").close()
    (run,) = wandb.runs
    assert run.init["config"] == cfg.model_dump(mode="json")
    assert run.init["project"] == "p"  # the user's output.wandb_project, not the caller's default
    assert run.init["entity"] == "me" and run.init["tags"] == ["x"] and run.init["name"] == "r1/r1_zero"


def test_completions_jsonl_rows(tmp_path):
    log = CompletionLog(tmp_path, max_rows=3)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}]
    rows = log.log(5, ["1+1=", chat, "3+3=", "4+4="], ["<answer>2</answer>", "4", "x", "y"],
                   {"accuracy": [1.0, 1.0, 0.0, 0.0], "format": [1.0, None, float("nan"), 0.0]},
                   [1.2, 0.3, -0.7, -0.8], total=[1.0, 0.5, 0.0, 0.0])
    log.close()
    saved = read_metrics(tmp_path / "completions.jsonl")
    assert saved == rows and len(saved) == 3  # max_rows
    assert saved[0] == {"step": 5, "prompt": "1+1=", "completion": "<answer>2</answer>", "accuracy": 1.0,
                        "format": 1.0, "total": 1.0, "advantage": 1.2}
    assert saved[1]["prompt"] == chat and saved[1]["format"] is None  # messages kept; None = not applicable
    assert saved[2]["format"] is None  # a failed (NaN) score is null: the file stays strict JSON
    assert all(math.isfinite(r["total"]) for r in saved)


def test_every_total_from_rewards_and_no_advantages(tmp_path):
    log = CompletionLog(tmp_path, every=2)
    assert log.log(1, ["a"], ["b"], {"accuracy": [1.0]}) == []
    (row,) = log.log(2, ["a"], ["b"], {"accuracy": [1.0], "total": [0.5]})
    assert row["total"] == 0.5 and row["advantage"] is None  # "total" in rewards is the total, not a component
    assert list(row) == ["step", "prompt", "completion", "accuracy", "total", "advantage"]
    (row,) = log.log(4, ["a"], ["b"], {"accuracy": [0.0]})
    assert row["total"] is None
    with pytest.raises(ValueError, match="'accuracy'"):
        log.log(6, ["a", "b"], ["b", "c"], {"accuracy": [1.0]})
    with pytest.raises(ValueError):
        CompletionLog(tmp_path, every=0)


def test_resume_drops_rows_after_the_checkpoint_and_a_fresh_run_replaces_the_file(tmp_path):
    log = CompletionLog(tmp_path)
    for step in (1, 2, 3):
        log.log(step, ["p"], ["c"], {"accuracy": [1.0]})
    log.close()
    CompletionLog(tmp_path, resume_step=2).close()
    assert [r["step"] for r in read_metrics(tmp_path / "completions.jsonl")] == [1, 2]
    CompletionLog(tmp_path).close()
    assert read_metrics(tmp_path / "completions.jsonl") == []


def test_tensorboard_text_table_and_wandb_table(tmp_path, wandb):
    writer, run = FakeWriter(), FakeRun()
    log = CompletionLog(tmp_path, tensorboard_writer=writer, wandb_run=run)
    chat = [{"role": "user", "content": "a|b"}]
    log.log(7, [chat], ["line 1\nline 2"], {"accuracy": [1.0]}, [0.25], total=[1.0])
    ((tag, text, step),) = writer.texts
    assert tag == "completions" and step == 7
    assert text.splitlines() == ["| prompt | completion | accuracy | total | advantage |", "|---|---|---|---|---|",
                                 "| user: a\\|b | line 1<br>line 2 | 1.000 | 1.000 | 0.250 |"]
    ((wstep, data),) = run.logged
    table = data["completions"]
    assert wstep == 7 and table.columns == ["step", "prompt", "completion", "accuracy", "total", "advantage"]
    assert table.data == [[7, "user: a|b", "line 1\nline 2", 1.0, 1.0, 0.25]]


def test_run_logger_hands_its_writers_to_the_completion_log(tmp_path, wandb):
    cfg = load_config(GRPOConfig, None, ["output.wandb=true", "output.tensorboard=false"])
    logger = RunLogger.from_config(tmp_path / "g", cfg, resume_step=None)
    completions = logger.completions(max_rows=2)
    completions.log(1, ["p", "q", "r"], ["c", "d", "e"], {"accuracy": [1.0, 0.0, 1.0]})
    completions.close()
    logger.close()
    assert len(read_metrics(tmp_path / "g" / "completions.jsonl")) == 2
    assert "completions" in wandb.runs[0].logged[0][1]
    off = RunLogger(tmp_path / "h", tensorboard=False, enabled=False).completions()
    assert off.log(1, ["p"], ["c"], {"accuracy": [1.0]}) == [] and not (tmp_path / "h").exists()


def test_curves_wrap_into_a_grid_titled_with_the_run(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.image

    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    run = tmp_path / "r1" / "final_rl" / "run"
    run.mkdir(parents=True)
    keys = [f"k{i}" for i in range(7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **{k: s * i for i, k in enumerate(keys)}}) + "\n"
                                               for s in range(40)))
    png = plot_metrics(run / "metrics.jsonl", tmp_path / "c.png", [*keys, "never_logged"], title="run")
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (1200, 890)  # 3 columns x 3 rows at 4 x 2.8 inches, 100 dpi
    assert titles == ["r1/final_rl"]
    plot_metrics(run / "metrics.jsonl", tmp_path / "d.png", keys[:2], title="my run")
    assert titles[-1] == "my run" and matplotlib.image.imread(tmp_path / "d.png").shape[1] == 800
    assert plot_metrics(run / "metrics.jsonl", tmp_path / "e.png", ["nope"]) is None
