"""The DeepSeek-R1 multi-stage pipeline (lecture section 4) as a plain, resumable list of stages.

    alignkit pipeline r1 -c configs/pipelines/r1_tiny.yaml

  1 r1_zero             GRPO on the base model, accuracy + format rewards (R1-Zero)
  2 cold_start_data     ideal reasoning traces, readable R1-Zero outputs (verified), few-shot samples
  3 cold_start_sft      SFT of the base model on the cold-start data
  4 reasoning_rl        GRPO with accuracy, format and language-consistency rewards
  5 rejection_sampling  N samples per prompt from the reasoning model, verified ones kept
  6 sft                 SFT of the BASE model on the curated data mixed with general data
  7 final_rl            GRPO with the combined rewards -> the teacher
  8 distill             the teacher's verified samples train a smaller student

Each stage writes its artifacts and ``manifest.json`` (recipe, resolved config, input checkpoint, code
version, wall time, held-out evaluation) under ``<output.dir>/<name>/<stage>/``. A stage whose manifest
says it finished is skipped on a re-run; an interrupted one resumes from its newest checkpoint. After the
run, ``report.md`` / ``report.json`` / ``report.png`` hold held-out accuracy, format compliance, language
consistency, mean completion length and wall time after every stage.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

import alignkit
from alignkit.config import Section, build_config, to_yaml
from alignkit.infra import seed_everything


class EvalSection(Section):
    n: int = Field(200, gt=0, description="held-out problems evaluated after every stage")
    levels: list[int] = Field([1, 2, 3], description="arithmetic levels of the held-out set")
    max_new_tokens: int = Field(48, gt=0, description="longest answer at evaluation")


class ColdStartSection(Section):
    n_ideal: int = Field(600, ge=0, description="programmatic ideal <think>/<answer> traces")
    n_zero_prompts: int = Field(300, ge=0, description="prompts answered by the R1-Zero model; verified, readable ones kept")
    n_few_shot: int = Field(100, ge=0, description="prompts answered by the base model after ideal exemplars; verified ones kept")
    few_shot_exemplars: int = Field(3, ge=1, description="ideal exemplars put in each few-shot prompt")


class R1Config(Section):
    name: str = Field("r1", description="run name: stages go to <output_dir>/<name>/<stage>/")
    output_dir: str = Field("runs", description="parent directory")
    base_model: str = Field("bundled", description="the base model ('bundled' or a directory)")
    student_model: str = Field("bundled-student", description="the distillation student ('bundled-student' or a directory)")
    seed: int = Field(0, description="seed of the data draws")
    eval: EvalSection = Field(default_factory=EvalSection, description="evaluation after every stage")
    cold_start: ColdStartSection = Field(default_factory=ColdStartSection, description="cold-start data")
    r1_zero: dict[str, Any] = Field({}, description="GRPO config of stage 1 (model.path is set by the pipeline)")
    cold_start_sft: dict[str, Any] = Field({}, description="SFT config of stage 3")
    reasoning_rl: dict[str, Any] = Field({}, description="GRPO config of stage 4")
    rejection_sampling: dict[str, Any] = Field({}, description="rejection-sampling config of stage 5")
    general_share: float = Field(0.2, ge=0, lt=1, description="stage 6: share of general (plain-answer) data in the mix")
    sft: dict[str, Any] = Field({}, description="SFT config of stage 6")
    final_rl: dict[str, Any] = Field({}, description="GRPO config of stage 7")
    distill: dict[str, Any] = Field({}, description="distillation config of stage 8")


@dataclass
class Stage:
    """One step of the pipeline: ``run(stage_dir)`` returns (model directory to evaluate or None, extras)."""

    name: str
    recipe: str
    input: str | None
    run: Callable[[Path], tuple[str | None, dict]]
    config: Any = None


def _with(data: dict, **dotted) -> dict:
    """``data`` with dotted keys set (the pipeline's wiring: model paths, output dirs, data files)."""
    out = json.loads(json.dumps(data))
    for key, value in dotted.items():
        node = out
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(alignkit.__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"alignkit {alignkit.__version__}" + (f" ({rev})" if rev else "")


# ----------------------------------------------------------------------------------------------------------
# Stage bodies
# ----------------------------------------------------------------------------------------------------------
def cold_start_data(cfg: R1Config, zero_model: str, out: Path) -> dict:
    """Cold-start SFT records from three sources, all in the same {"prompt", "completion"} format."""
    from alignkit.data import ideal_trace, write_jsonl
    from alignkit.evaluation import arithmetic_train_problems
    from alignkit.recipes import rejection_sampling as rs

    cs = cfg.cold_start
    problems = arithmetic_train_problems(cs.n_ideal + cs.n_few_shot + 5000, cfg.eval.levels)
    records = [{"prompt": p.question, "completion": ideal_trace(p), "source": "ideal"} for p in problems[:cs.n_ideal]]
    counts = {"ideal": len(records)}
    verify = {"reward": {"weights": {"accuracy": 0.5, "format": 0.5}}, "select": {"threshold": 1.0, "max_per_prompt": 1}}
    if cs.n_zero_prompts:  # readable R1-Zero outputs: right answer, strict format
        zcfg = build_config(rs.RejectionSamplingConfig, _with(verify, model__path=zero_model, prompts__n_prompts=cs.n_zero_prompts,
                            prompts__offset=5000, prompts__levels=cfg.eval.levels, output__dir=str(out), output__name="r1_zero_samples",
                            output__overwrite=True))  # an unfinished stage is redone
        stats = rs.run(zcfg)
        kept = [json.loads(x) for x in Path(stats["data"]).read_text().splitlines()]
        records += [{"prompt": r["prompt"], "completion": r["completion"], "source": "r1_zero"} for r in kept]
        counts["r1_zero"] = len(kept)
    if cs.n_few_shot:  # few-shot prompting of the base model with ideal exemplars
        rng = random.Random(cfg.seed)
        shots = problems[:cs.n_ideal] or problems
        prompts_file = out / "few_shot_prompts.jsonl"
        rows = []
        for p in problems[cs.n_ideal:cs.n_ideal + cs.n_few_shot]:
            ex = rng.sample(shots, cs.few_shot_exemplars)
            chat = []
            for e in ex:
                chat += [{"role": "user", "content": e.question}, {"role": "assistant", "content": ideal_trace(e)}]
            rows.append({"prompt": chat + [{"role": "user", "content": p.question}], "answer": p.answer_text,
                         "question": p.question})
        write_jsonl(rows, prompts_file)
        fcfg = build_config(rs.RejectionSamplingConfig, _with(verify, model__path=cfg.base_model, prompts__train_file=str(prompts_file),
                            prompts__n_prompts=len(rows), prompts__max_prompt_length=512, output__dir=str(out),
                            output__name="few_shot_samples", output__overwrite=True))
        stats = rs.run(fcfg)
        kept = [json.loads(x) for x in Path(stats["data"]).read_text().splitlines()]
        records += [{"prompt": r["question"], "completion": r["completion"], "source": "few_shot"} for r in kept]
        counts["few_shot"] = len(kept)
    write_jsonl(records, out / "data.jsonl")
    return {"data": str(out / "data.jsonl"), "counts": counts}


def mixed_sft_data(cfg: R1Config, curated_file: str, out: Path) -> dict:
    """Curated reasoning data mixed with general (plain-answer) data, ``general_share`` of the total."""
    from alignkit.data import write_jsonl
    from alignkit.evaluation import arithmetic_train_problems

    curated = [json.loads(x) for x in Path(curated_file).read_text().splitlines()]
    n_general = round(len(curated) * cfg.general_share / (1 - cfg.general_share))
    general = [{"prompt": p.question, "completion": f"{p.question}={p.answer}", "source": "general"}
               for p in arithmetic_train_problems(20000 + n_general, cfg.eval.levels)[20000:]]
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "source": "curated"} for r in curated] + general
    random.Random(cfg.seed).shuffle(rows)
    write_jsonl(rows, out / "mixed.jsonl")
    return {"data": str(out / "mixed.jsonl"), "counts": {"curated": len(curated), "general": len(general)}}


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
def stages(cfg: R1Config, root: Path) -> list[Stage]:
    """The ordered stages with explicit checkpoint handoff: each names its input and writes final/."""
    from alignkit.recipes import distill, grpo, rejection_sampling, sft

    def final(name):
        return str(root / name / "final")

    def recipe_stage(name, module, cls, data, input_model, model_key="model__path", produced="final"):
        conf = build_config(cls, _with(data, **{model_key: input_model}, output__dir=str(root / name),
                                       output__name="run"), source=f"stage {name}")

        def body(stage_dir: Path):
            result = module.run(_resumable(conf))
            model_dir = stage_dir / "run" / produced
            if (model_dir / "config.json").exists():
                _link(model_dir, stage_dir / "final")
            return (str(stage_dir / "final") if (stage_dir / "final").exists() else None), _small(result)
        return Stage(name, module.__name__.rsplit(".", 1)[-1], input_model, body, conf)

    def data_stage(name, fn, input_path):
        return Stage(name, "data", input_path, lambda d: (None, fn(d)))

    rs_dir = root / "rejection_sampling" / "run"
    return [
        recipe_stage("r1_zero", grpo, grpo.GRPOConfig, cfg.r1_zero, cfg.base_model),
        data_stage("cold_start_data", lambda d: cold_start_data(cfg, final("r1_zero"), d), final("r1_zero")),
        recipe_stage("cold_start_sft", sft, sft.SFTConfig,
                     _with(cfg.cold_start_sft, data__train_file=str(root / "cold_start_data" / "data.jsonl")), cfg.base_model),
        recipe_stage("reasoning_rl", grpo, grpo.GRPOConfig, cfg.reasoning_rl, final("cold_start_sft")),
        recipe_stage("rejection_sampling", rejection_sampling, rejection_sampling.RejectionSamplingConfig,
                     cfg.rejection_sampling, final("reasoning_rl")),
        data_stage("sft_data", lambda d: mixed_sft_data(cfg, str(rs_dir / "data.jsonl"), d), str(rs_dir / "data.jsonl")),
        recipe_stage("sft", sft, sft.SFTConfig,
                     _with(cfg.sft, data__train_file=str(root / "sft_data" / "mixed.jsonl")), cfg.base_model),
        recipe_stage("final_rl", grpo, grpo.GRPOConfig, cfg.final_rl, final("sft")),
        recipe_stage("distill", distill, distill.DistillConfig,
                     _with(cfg.distill, student__path=cfg.student_model), final("final_rl"), model_key="teacher__path",
                     produced="student/final"),
    ]


def _resumable(conf):
    """Stages always resume an interrupted run of themselves (a recipe starts at step 0 when nothing is
    saved); a stage that cannot resume (rejection sampling) redoes it (output.overwrite)."""
    fields = type(conf.output).model_fields if "output" in type(conf).model_fields else {}
    for key in ("resume", "overwrite"):
        if key in fields:
            return conf.model_copy(update={"output": conf.output.model_copy(update={key: True})})
    return conf


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.relative_to(dst.parent))


def _small(result: dict) -> dict:
    """The JSON-friendly part of a recipe's summary, for the manifest."""
    return json.loads(json.dumps(result, default=str))


def evaluate_dir(model_dir: str | None, cfg: EvalSection) -> dict:
    if model_dir is None:
        return {}
    from alignkit.evaluation import arithmetic_eval_set, evaluate_model
    from alignkit.models import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(model_dir)
    return evaluate_model(load_causal_lm(path), load_tokenizer(path), arithmetic_eval_set(cfg.levels, n=cfg.n),
                          max_new_tokens=cfg.max_new_tokens)


def run(cfg: R1Config, *, only: list[str] | None = None) -> dict:
    """Run (or resume) the pipeline; returns the report rows. ``only``: stop after these stages (tests)."""
    from alignkit.pipelines.report import write_report

    seed_everything(cfg.seed)
    root = Path(cfg.output_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(to_yaml(cfg))
    plan = stages(cfg, root)  # validates every stage's config before anything runs
    base_eval = root / "base_eval.json"
    if not base_eval.exists():
        base_eval.write_text(json.dumps({"stage": "base", **evaluate_dir(cfg.base_model, cfg.eval), "wall_s": 0.0}))
    rows = [json.loads(base_eval.read_text())]
    for stage in plan:
        stage_dir = root / stage.name
        manifest_path = stage_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if manifest.get("finished"):
            print(f"[r1] {stage.name}: done earlier, skipped")
        else:
            print(f"[r1] {stage.name} ({stage.recipe}) <- {stage.input}")
            stage_dir.mkdir(parents=True, exist_ok=True)
            manifest = {"stage": stage.name, "recipe": stage.recipe, "input": stage.input, "code": code_version(),
                        "config": json.loads(stage.config.model_dump_json()) if stage.config is not None else None,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            manifest_path.write_text(json.dumps(manifest, indent=1))
            t0 = time.perf_counter()
            model_dir, result = stage.run(stage_dir)
            evaluated = evaluate_dir(model_dir, cfg.eval)
            manifest.update(result=result, model=model_dir, eval=evaluated, wall_s=time.perf_counter() - t0,
                            finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
        if manifest.get("eval"):
            rows.append({"stage": stage.name, **manifest["eval"], "wall_s": manifest["wall_s"]})
        if only and stage.name == only[-1]:
            break
    write_report(rows, root)
    return {"rows": rows, "root": str(root)}
