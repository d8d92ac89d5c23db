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

  (distill_logits      optional: the same student trained on the teacher's logits, compared in the report)
  (preference_data,    optional, before final_rl: pairs from the shipped chat set, and a Bradley-Terry reward
   preference_rm        model on them; final RL then mixes general chat prompts scored by it, reward.when
                        keeping the task rewards on the problems)

``second_language`` asks a share of the word problems in Chinese (the language reward judges each completion
against its problem's language). Every evaluation keeps each held-out problem's 0/1 result, so the report
gives each accuracy a 95% interval and each stage a paired change against its input.

Each stage writes its artifacts and ``manifest.json`` (recipe, resolved config, input checkpoint, code
version, fingerprint, wall time, held-out evaluation) under ``<output.dir>/<name>/<stage>/``.

Re-runs. A stage's *fingerprint* hashes its resolved config (run-directory paths written relative to the
run, the contents of the data files it reads) and the fingerprints of the stages it consumes. On a re-run a
finished stage with the same fingerprint is skipped; one whose fingerprint changed is cleared and redone
("settings changed: rerunning <stage> (and later stages)"), and so is every stage that consumes a redone
one. An interrupted stage with unchanged settings resumes from its newest checkpoint. A SIGTERM inside a
stage's recipe (which saves a checkpoint and returns) stops the pipeline there, the stage left unfinished:
it is never taken for a finished stage, and the next run resumes it.

Empty outputs fail in the stage that produced them, naming it and the settings to change (rejection sampling
that kept nothing, cold-start data with no row); any error in a stage is re-raised as ``StageError`` naming
the stage.

Tasks: ``task: arithmetic`` (the tiny model's bare expressions) or ``word_problems`` (multi-step word
problems, ``alignkit.data.word_problems``); ``prompt_template`` wraps every question the pipeline asks (the
R1-Zero instruction for a real model). With either set away from the defaults, the pipeline writes the
prompt files under ``<run>/task/`` and points the stages at them.

After the run, ``report.md`` / ``report.json`` / ``report.png`` hold held-out accuracy, format compliance,
language consistency, verified <think> steps, mean completion length, model size and wall time after every
stage (and, with ``general_source: chat``, the share of held-out general prompts answered plainly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import alignkit
from alignkit.config import Section, build_config, to_yaml
from alignkit.infra import seed_everything


class StageError(RuntimeError):
    """A stage failed or produced nothing; the message names the stage (and the settings to change)."""


class EvalSection(Section):
    n: int = Field(200, gt=0, description="held-out problems evaluated after every stage")
    levels: list[int] = Field([1, 2, 3], description="arithmetic levels of the held-out set")
    max_new_tokens: int = Field(48, gt=0, description="longest answer at evaluation")
    general_n: int = Field(10, ge=0, description="general_source=chat: held-out general prompts checked after every stage")
    general_max_new_tokens: int = Field(48, gt=0, description="longest answer to a general prompt")


class SamplingFields(Section):
    """How the pipeline samples where no recipe config says it (the cold start's two sources)."""

    num_samples: int = Field(8, gt=0, description="completions per prompt")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus filtering")
    max_new_tokens: int = Field(48, gt=0, description="longest completion")
    batch_prompts: int = Field(64, gt=0, description="prompts per generate call")


class ColdStartSection(Section):
    n_ideal: int = Field(600, ge=0, description="programmatic ideal <think>/<answer> traces")
    n_zero_prompts: int = Field(300, ge=0, description="prompts answered by the R1-Zero model; verified, readable ones kept")
    n_few_shot: int = Field(100, ge=0, description="prompts answered by the base model after ideal exemplars; verified ones kept")
    few_shot_exemplars: int = Field(3, ge=1, description="ideal exemplars put in each few-shot prompt")
    few_shot_match: bool = Field(True, description="exemplars of the question's own kind: the same word-problem "
                                 "template (arithmetic: level) and language, where the pool has enough; on "
                                 "SmolLM2-135M random exemplars verified 0 of 128 samples, matched ones 2 of 64")
    few_shot_max_prompt_length: int = Field(512, gt=0, description="longest few-shot prompt in tokens (longer ones are dropped)")
    zero_sampling: SamplingFields = Field(default_factory=SamplingFields, description="sampling of the R1-Zero model")
    few_shot_sampling: SamplingFields = Field(default_factory=SamplingFields, description="sampling of the few-shot base model")
    max_per_prompt: int = Field(1, gt=0, description="verified completions kept per prompt (each source)")
    verify_steps: bool = Field(True, description="keep sampled rows only when every <think> step checks out, is "
                               "grounded in the question and reaches the answer (alignkit.rewards.steps)")


class SecondLanguageSection(Section):
    """A share of the word problems asked in a second language (the R1 language-mixing setting)."""

    language: str | None = Field(None, description="ask a share of the word problems in this language (zh) with "
                                 "its own instruction; the language-consistency reward then judges each completion "
                                 "against its problem's language (None = every problem in English)")
    share: float = Field(0.25, ge=0, le=1, description="share of the problems (train and held out) asked in it")
    trace_share: float = Field(1.0, ge=0, le=1, description="share of the second-language problems whose ideal "
                               "cold-start trace thinks in that language; the others think in English, as data from "
                               "an English-centric teacher would -- the cold-start model then mixes languages and "
                               "the language reward has something to correct")
    prompt_template: str = Field("{question}", description="the instruction around a second-language question")


class R1Config(Section):
    name: str = Field("r1", description="run name: stages go to <output_dir>/<name>/<stage>/")
    output_dir: str = Field("runs", description="parent directory")
    base_model: str = Field("bundled", description="the base model ('bundled' or a directory; ~ expands)")
    student_model: str = Field("bundled-student", description="the distillation student: 'bundled-student', a "
                               "directory, or derive:every_other_layer / derive:keep_every=<k> (every k-th layer "
                               "of the teacher, initialized from its weights, same tokenizer)")
    seed: int = Field(0, description="seed of the data draws")
    task: Literal["arithmetic", "word_problems"] = Field("arithmetic", description="arithmetic expressions (the tiny "
                                                         "model's task) or multi-step arithmetic word problems")
    prompt_template: str = Field("{question}", description="every question the pipeline asks, e.g. the R1-Zero "
                                 "instruction around {question}")
    task_train_prompts: int = Field(4000, gt=0, description="task files: training prompts of the GRPO stages")
    second_language: SecondLanguageSection = Field(default_factory=SecondLanguageSection,
                                                   description="task word_problems: a share asked in a second language")
    eval: EvalSection = Field(default_factory=EvalSection, description="evaluation after every stage")
    cold_start: ColdStartSection = Field(default_factory=ColdStartSection, description="cold-start data")
    r1_zero: dict[str, Any] = Field({}, description="GRPO config of stage 1 (model.path is set by the pipeline; "
                                    "accuracy reads the answer only from <answer> unless reward.options.accuracy.strict is set)")
    cold_start_sft: dict[str, Any] = Field({}, description="SFT config of stage 3")
    reasoning_rl: dict[str, Any] = Field({}, description="GRPO config of stage 4")
    rejection_sampling: dict[str, Any] = Field({}, description="rejection-sampling config of stage 5")
    general_share: float = Field(0.2, ge=0, lt=1, description="stage 6: share of general data in the mix")
    general_source: Literal["arithmetic", "chat"] = Field("arithmetic", description="stage 6's general data: plain "
                                                          "arithmetic answers, or the shipped conversational set "
                                                          "(assets/general_chat.jsonl; the report checks it)")
    sft_with_cold_start: bool = Field(False, description="stage 6's reasoning data also holds the cold-start data "
                                      "(ideal traces and kept samples) beside the rejection-sampled rows: where the "
                                      "reasoning model passes few verified samples (16 of 384 on SmolLM2-135M) the "
                                      "second SFT otherwise learns from almost nothing")
    keep_checkpoints: bool = Field(False, description="keep a finished stage's training checkpoints (weights and "
                                   "optimizer state, 1.6 GB each on SmolLM2-135M); by default they are deleted once "
                                   "the stage's final model is saved: only an unfinished stage resumes from them")
    sft_min_language: float | None = Field(None, ge=0, le=1, description="stage 6 keeps only the reasoning rows "
                                           "whose language consistency (alignkit.rewards.language, against the "
                                           "language the problem is asked in) is at least this, as R1 filtered "
                                           "chain-of-thought with mixed languages out of its second SFT's data "
                                           "(None keeps every row)")
    sft: dict[str, Any] = Field({}, description="SFT config of stage 6")
    preference_rm: dict[str, Any] | None = Field(None, description="optional: reward-model config (alignkit rm) of "
                                                 "a Bradley-Terry model trained from the base model on preference "
                                                 "pairs built from the shipped general chat set; final RL then mixes "
                                                 "general chat prompts (final_rl_general_share) scored by it")
    final_rl_general_share: float = Field(0.25, ge=0, lt=1, description="with preference_rm: share of general chat "
                                          "prompts among final RL's training prompts")
    final_rl: dict[str, Any] = Field({}, description="GRPO config of stage 7")
    distill: dict[str, Any] = Field({}, description="distillation config of stage 8")
    distill_logits: dict[str, Any] | None = Field(None, description="optional stage 9: the same kind of student "
                                                  "trained by logit distillation (mode=logits), for the report's comparison")

    @model_validator(mode="after")
    def _second_language_needs_word_problems(self):
        if self.second_language.language is not None:
            if self.task != "word_problems":
                raise ValueError(f"second_language.language={self.second_language.language!r} needs task=word_problems "
                                 f"(the arithmetic task has no words to translate), got task={self.task!r}")
            from alignkit.data.word_problems import LANGUAGES

            if self.second_language.language not in LANGUAGES:
                raise ValueError(f"second_language.language={self.second_language.language!r}: word problems are "
                                 f"written in {', '.join(LANGUAGES)}")
        return self


@dataclass
class Stage:
    """One step of the pipeline: ``run(stage_dir)`` returns (model directory to evaluate or None, extras)."""

    name: str
    recipe: str
    input: str | None
    run: Callable[[Path], tuple[str | None, dict]]
    config: Any = None
    deps: list[str] = field(default_factory=list)  # stages whose outputs this one reads
    settings: dict | None = None  # a data stage's settings (a recipe stage's are its config)
    evaluate: bool = True  # False: its output is not a policy (the preference reward model)


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
# The task: problems, prompt files, ideal traces
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TaskProblem:
    """One problem as the pipeline asks it: ``question`` with the prompt template, ``raw`` without."""

    question: str
    answer: str
    level: int
    ideal: str
    raw: str
    language: str | None = None  # set when the pipeline asks some problems in a second language
    kind: str | None = None  # "task" when final RL mixes task and general prompts (reward.when routes on it)
    template: str | None = None  # the word-problem template ("apples", ...); not a column of the records

    @property
    def fields(self) -> dict:
        extra = {k: v for k, v in (("language", self.language), ("kind", self.kind)) if v is not None}
        return {"answer": self.answer, "question": self.raw, "level": self.level, **extra}

    def record(self) -> dict:
        return {"prompt": self.question, **self.fields}


def _wrap(cfg: R1Config, problem, ideal: str) -> TaskProblem:
    second = cfg.second_language.language is not None
    template = (cfg.second_language.prompt_template if second and getattr(problem, "language", "en") != "en"
                else cfg.prompt_template)
    return TaskProblem(template.format(question=problem.question), problem.answer_text, problem.level, ideal,
                       problem.question, language=getattr(problem, "language", "en") if second else None,
                       kind="task" if cfg.preference_rm is not None else None,
                       template=getattr(problem, "template", None))


def _in_languages(cfg: R1Config, problems: list, offset: int) -> list:
    """Word problems with the second-language share asked in it (by absolute index: a problem's language does
    not depend on how many are drawn)."""
    lang = cfg.second_language.language
    if lang is None:
        return problems
    from alignkit.data.word_problems import second_language_indices, word_problem_in

    flags = second_language_indices(offset + len(problems), cfg.second_language.share)[offset:]
    return [word_problem_in(p, lang) if f else p for p, f in zip(problems, flags)]


def _english_traces(cfg: R1Config, offset: int, n: int) -> list[bool]:
    """Which training problems ``offset .. offset + n`` are second-language problems whose ideal trace thinks in
    English (``second_language.trace_share``): by the problem's rank among the second-language problems, so
    that it does not depend on how many are drawn."""
    sl = cfg.second_language
    if sl.language is None or sl.trace_share >= 1.0:
        return [False] * n
    from alignkit.data.word_problems import second_language_indices

    flags = second_language_indices(offset + n, sl.share)
    in_language = second_language_indices(sum(flags), sl.trace_share)
    rank = list(itertools.accumulate(flags, initial=0))  # second-language problems before index i
    return [flags[i] and not in_language[rank[i]] for i in range(offset, offset + n)]


def train_problems(cfg: R1Config, n: int, offset: int = 0) -> list[TaskProblem]:
    """Training problems ``offset .. offset + n`` of the task (never a held-out question)."""
    if cfg.task == "word_problems":
        from alignkit.data.word_problems import word_ideal_trace, word_problem_train_problems

        drawn = _in_languages(cfg, word_problem_train_problems(offset + n)[offset:], offset)
        english = _english_traces(cfg, offset, n)
        return [_wrap(cfg, p, word_ideal_trace(dataclasses.replace(p, language="en") if e else p))
                for p, e in zip(drawn, english)]
    from alignkit.data import ideal_trace
    from alignkit.evaluation import arithmetic_train_problems

    return [_wrap(cfg, p, ideal_trace(p)) for p in arithmetic_train_problems(offset + n, cfg.eval.levels)[offset:]]


def eval_problems(cfg: R1Config) -> list[TaskProblem]:
    """The seeded held-out problems every stage is evaluated on."""
    if cfg.task == "word_problems":
        from alignkit.data.word_problems import word_ideal_trace, word_problem_eval_set

        return [_wrap(cfg, p, word_ideal_trace(p)) for p in _in_languages(cfg, word_problem_eval_set(cfg.eval.n), 0)]
    from alignkit.data import ideal_trace
    from alignkit.evaluation import arithmetic_eval_set

    return [_wrap(cfg, p, ideal_trace(p)) for p in arithmetic_eval_set(cfg.eval.levels, n=cfg.eval.n)]


def uses_task_files(cfg: R1Config) -> bool:
    """The recipes' built-in synthetic prompts are the bare arithmetic task; anything else goes through files."""
    return cfg.task != "arithmetic" or cfg.prompt_template != "{question}" or cfg.preference_rm is not None


def _write_if_changed(rows: list[dict], path: Path) -> str:
    """Write jsonl rows unless the file already holds exactly them (keeps fingerprints and mtimes stable)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def general_chat_rows() -> tuple[list[dict], list[dict]]:
    """(train, held out) rows of the shipped general conversational set: every fifth row is held out."""
    rows = [json.loads(x) for x in (Path(alignkit.__file__).parent / "assets" / "general_chat.jsonl").read_text().splitlines()]
    return [r for i, r in enumerate(rows) if i % 5 != 4], [r for i, r in enumerate(rows) if i % 5 == 4]


# ----------------------------------------------------------------------------------------------------------
# Stage bodies
# ----------------------------------------------------------------------------------------------------------
def _sample_verified(cfg: R1Config, model: str, rows: list[dict], sampling: SamplingFields, out: Path, name: str,
                     max_prompt_length: int) -> list[dict]:
    """Rejection sampling with the cold start's own settings: right answer (strict) in the R1 format, steps
    verified when ``cold_start.verify_steps``."""
    from alignkit.data import write_jsonl
    from alignkit.recipes import rejection_sampling as rs

    prompts_file = out / f"{name}_prompts.jsonl"
    write_jsonl(rows, prompts_file)
    conf = build_config(rs.RejectionSamplingConfig, {
        "model": {"path": model},
        "prompts": {"train_file": str(prompts_file), "n_prompts": len(rows), "max_prompt_length": max_prompt_length},
        "sampling": {**sampling.model_dump(), "seed": cfg.seed},
        "reward": {"weights": {"accuracy": 0.5, "format": 0.5}, "options": {"accuracy": {"strict": True}}},
        "select": {"threshold": 1.0, "max_per_prompt": cfg.cold_start.max_per_prompt,
                   "verify_steps": cfg.cold_start.verify_steps},
        "output": {"dir": str(out), "name": name, "overwrite": True}}, source=f"stage cold_start_data ({name})")
    stats = rs.run(conf)
    return [json.loads(x) for x in Path(stats["data"]).read_text().splitlines()]


def cold_start_data(cfg: R1Config, zero_model: str, out: Path) -> dict:
    """Cold-start SFT records from three sources, all in the same {"prompt", "completion"} format."""
    from alignkit.data import write_jsonl

    cs = cfg.cold_start
    problems = train_problems(cfg, cs.n_ideal + cs.n_few_shot)
    records = [{"prompt": p.question, "completion": p.ideal, "source": "ideal"} for p in problems[:cs.n_ideal]]
    counts = {"ideal": len(records)}
    if cs.n_zero_prompts:  # readable R1-Zero outputs: strict format, right answer, verified steps
        zero = [p.record() for p in train_problems(cfg, cs.n_zero_prompts, offset=5000)]
        kept = _sample_verified(cfg, zero_model, zero, cs.zero_sampling, out, "r1_zero_samples",
                                max(512, cs.few_shot_max_prompt_length))
        records += [{"prompt": r["prompt"], "completion": r["completion"], "source": "r1_zero"} for r in kept]
        counts["r1_zero"] = len(kept)
    if cs.n_few_shot:  # few-shot prompting of the base model with ideal exemplars
        rng = random.Random(cfg.seed)
        shots = problems[:cs.n_ideal] or problems
        rows = []
        for p in problems[cs.n_ideal:cs.n_ideal + cs.n_few_shot]:
            chat, pool = [], few_shot_pool(p, shots, cs.few_shot_exemplars) if cs.few_shot_match else shots
            for e in rng.sample(pool, min(cs.few_shot_exemplars, len(pool))):
                chat += [{"role": "user", "content": e.question}, {"role": "assistant", "content": e.ideal}]
            rows.append({**p.record(), "prompt": chat + [{"role": "user", "content": p.question}], "asked": p.question})
        kept = _sample_verified(cfg, cfg.base_model, rows, cs.few_shot_sampling, out, "few_shot_samples",
                                cs.few_shot_max_prompt_length)
        records += [{"prompt": r["asked"], "completion": r["completion"], "source": "few_shot"} for r in kept]
        counts["few_shot"] = len(kept)
    if not records:
        raise StageError("stage cold_start_data produced no row: raise cold_start.n_ideal, or let the sampled sources "
                         "keep more (cold_start.zero_sampling / few_shot_sampling: num_samples, max_new_tokens; "
                         "cold_start.verify_steps=false)")
    for source, asked in (("r1_zero", cs.n_zero_prompts), ("few_shot", cs.n_few_shot)):
        if asked and not counts.get(source):
            print(f"[r1] cold_start_data: the {source} source kept no row of {asked} prompts (format, answer and "
                  f"steps verified); raise cold_start.{'zero' if source == 'r1_zero' else 'few_shot'}_sampling."
                  "num_samples or max_new_tokens to keep some", flush=True)
    write_jsonl(records, out / "data.jsonl")
    return {"data": str(out / "data.jsonl"), "counts": counts}


def few_shot_pool(problem: TaskProblem, shots: list[TaskProblem], k: int) -> list[TaskProblem]:
    """Exemplars of ``problem``'s kind: the same template (or, without one, level) and language; the same
    template in any language when fewer than ``k`` match both; every shot when fewer than ``k`` match either."""
    kind = (lambda e: e.template == problem.template) if problem.template is not None else (
        lambda e: e.level == problem.level)
    for pool in ([e for e in shots if kind(e) and e.language == problem.language], [e for e in shots if kind(e)]):
        if len(pool) >= k:
            return pool
    return shots


def mixed_sft_data(cfg: R1Config, curated_file: str, out: Path, cold_start_file: str | None = None) -> dict:
    """Curated reasoning data mixed with general data, ``general_share`` of the total: plain arithmetic answers
    (``general_source: arithmetic``) or the shipped conversational set, repeated as needed (``chat``).
    ``cold_start_file`` (``sft_with_cold_start``): its rows join the curated reasoning data."""
    from alignkit.data import write_jsonl

    curated = [json.loads(x) for x in Path(curated_file).read_text().splitlines()] if Path(curated_file).exists() else []
    if not curated:
        raise StageError(f"stage sft_data: the rejection-sampling data {curated_file} has no row; lower "
                         "rejection_sampling.select.threshold or raise rejection_sampling.sampling.num_samples")
    if cold_start_file is not None:
        curated += [dict(json.loads(x), source="cold_start") for x in Path(cold_start_file).read_text().splitlines()]
    curated = [dict(r, source=r.get("source") if r.get("source") == "cold_start" else "curated") for r in curated]
    language_dropped = {}
    if cfg.sft_min_language is not None:
        kept = [r for r in curated if _row_language_share(r, cfg) >= cfg.sft_min_language]
        for src in ("curated", "cold_start"):
            language_dropped[src] = sum(r["source"] == src for r in curated) - sum(r["source"] == src for r in kept)
        if not kept:
            raise StageError(f"stage sft_data: no reasoning row has language consistency >= {cfg.sft_min_language} "
                             "(sft_min_language); lower it or unset it")
        curated = kept
    n_sampled = sum(r["source"] == "curated" for r in curated)
    n_general = round(len(curated) * cfg.general_share / (1 - cfg.general_share))
    if cfg.general_source == "chat":
        chat, _ = general_chat_rows()
        general = [{"prompt": chat[i % len(chat)]["prompt"], "completion": chat[i % len(chat)]["completion"],
                    "source": "general"} for i in range(n_general)]
    else:
        general = [{"prompt": p.question, "completion": f"{p.raw}={p.answer}", "source": "general"}
                   for p in train_problems(cfg, n_general, offset=20000)]
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "source": r["source"]} for r in curated] + general
    random.Random(cfg.seed).shuffle(rows)
    write_jsonl(rows, out / "mixed.jsonl")
    counts = {"curated": n_sampled, **({"cold_start": len(curated) - n_sampled} if cold_start_file else {}),
              "general": len(general)}
    return {"data": str(out / "mixed.jsonl"), "counts": counts,
            **({"language_dropped": language_dropped} if cfg.sft_min_language is not None else {})}


def _row_language_share(row: dict, cfg: R1Config) -> float:
    """A reasoning row's language consistency against the language its problem is asked in: the row's
    ``language`` column, else the second language where the prompt is mostly in its script, else English."""
    from alignkit.rewards.language import language_consistency_reward

    language = row.get("language")
    second = cfg.second_language.language
    if language is None:
        asked_second = second is not None and language_consistency_reward(row["prompt"], language=second) > 0.5
        language = second if asked_second else "en"
    return language_consistency_reward(row["completion"], language=language)


UNHELPFUL = ("I don't know.", "I cannot help with that.", "Please ask someone else.", "That is not something I can answer.")


def preference_pairs(rows: list[dict]) -> list[dict]:
    """Bradley-Terry pairs from general chat rows ({"prompt", "completion"}): the reference reply is preferred
    over (1) the reply to another prompt (off topic), (2) the same reply inside the R1 reasoning format (the
    reasoning stages' habit leaking into chat), (3) an unhelpful non-answer. Three pairs per row.

    >>> [p["rejected"] for p in preference_pairs([{"prompt": "Hi?", "completion": "Hello!"},
    ...                                           {"prompt": "2?", "completion": "Two."}])[:3]]
    ['Two.', '<think>Hi?</think><answer>Hello!</answer>', "I don't know."]
    """
    n = len(rows)
    pairs = []
    for i, r in enumerate(rows):
        other = rows[(i + max(1, n // 2)) % n]["completion"]
        rejected = [other] if other != r["completion"] else []
        rejected += [f"<think>{r['prompt']}</think><answer>{r['completion']}</answer>", UNHELPFUL[i % len(UNHELPFUL)]]
        pairs += [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": x} for x in rejected]
    return pairs


def preference_data(out: Path) -> dict:
    """The preference reward model's data: pairs from the general chat set's training rows, and held-out pairs
    from its held-out rows (the report's general prompts)."""
    from alignkit.data import write_jsonl

    train, held = (preference_pairs(rows) for rows in general_chat_rows())
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(held, out / "eval.jsonl")
    return {"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl"),
            "counts": {"train": len(train), "eval": len(held)}}


def final_rl_rows(cfg: R1Config) -> list[dict]:
    """Final RL's prompts with a preference reward model: the task's training prompts (kind "task") and
    general chat prompts (kind "general"), ``final_rl_general_share`` of the total, shuffled (seeded)."""
    task = [p.record() for p in train_problems(cfg, cfg.task_train_prompts)]
    chat, _ = general_chat_rows()
    n_general = round(len(task) * cfg.final_rl_general_share / (1 - cfg.final_rl_general_share))
    rows = task + [{"prompt": chat[i % len(chat)]["prompt"], "kind": "general"} for i in range(n_general)]
    random.Random(cfg.seed).shuffle(rows)
    return rows


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
def _has(data: dict, dotted: str) -> bool:
    node = data
    for key in dotted.split("__"):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _defaults(data: dict, **dotted) -> dict:
    """``data`` with dotted keys set where the user did not set them."""
    return _with(data, **{k: v for k, v in dotted.items() if not _has(data, k)})


def task_wiring(cfg: R1Config, root: Path, *, write: bool = False) -> dict[str, dict]:
    """With task files: per-stage config defaults pointing at them under ``<run>/task/`` (``write``: also write
    them; ``run`` does, before any stage is fingerprinted; planning alone writes nothing)."""
    if not uses_task_files(cfg):
        return {}
    from alignkit.recipes import distill, rejection_sampling

    def grpo_config():
        from alignkit.recipes.grpo import GRPOConfig

        return GRPOConfig

    task = root / "task"

    def _file(rows: Callable[[], list[dict]], path: Path) -> str:  # rows are built only when written
        return _write_if_changed(rows(), path) if write else str(path)

    grpo = {"data__train_file": _file(lambda: [p.record() for p in train_problems(cfg, cfg.task_train_prompts)],
                                                  task / "train.jsonl"),
            "data__eval_file": _file(lambda: [p.record() for p in eval_problems(cfg)], task / "eval.jsonl")}
    wiring = {name: grpo for name in ("r1_zero", "reasoning_rl", "final_rl")}
    if cfg.preference_rm is not None:  # final RL: task and general prompts, each scored by its own rewards
        weights = build_config(grpo_config(), cfg.final_rl, source="stage final_rl").reward.weights
        wiring["final_rl"] = {
            **grpo, "data__train_file": _file(lambda: final_rl_rows(cfg), task / "final_rl.jsonl"),
            "reward__model": str(root / "preference_rm" / "final"),
            "reward__when": {**{c: {"kind": "task"} for c in weights}, "model": {"kind": "general"}}}
    files: dict[tuple[int, int], str] = {}  # (n_prompts, first problem) -> its file: equal prompts, one file
    for name, cls, base in (("rejection_sampling", rejection_sampling.RejectionSamplingConfig, 10000),
                            ("distill", distill.DistillConfig, 20000), ("distill_logits", distill.DistillConfig, 20000)):
        data = getattr(cfg, name)
        if data is None:
            continue
        prompts = build_config(cls, data, source=f"stage {name}").prompts
        if prompts.train_file is not None:
            continue
        start = prompts.offset or base
        rows = lambda n=prompts.n_prompts, start=start: [p.record() for p in train_problems(cfg, n, offset=start)]  # noqa: E731
        # the file starts at the stage's offset already: the offset is reset, whatever the stage's config says
        if (prompts.n_prompts, start) not in files:
            files[prompts.n_prompts, start] = _file(rows, task / f"{name}.jsonl")
        wiring[name] = {"prompts__train_file": files[prompts.n_prompts, start], "prompts__offset!": 0}
    return wiring


def stages(cfg: R1Config, root: Path) -> list[Stage]:
    """The ordered stages with explicit checkpoint handoff: each names its input and writes final/."""
    from alignkit.recipes import distill, grpo, rejection_sampling, reward_model, sft

    wiring = task_wiring(cfg, root)

    def final(name):
        return str(root / name / "final")

    def recipe_stage(name, module, cls, data, input_model, deps, model_key="model__path", produced="final",
                     before=None, strict_accuracy=False):
        wired = wiring.get(name, {})
        data = _defaults(data, **{k: v for k, v in wired.items() if not k.endswith("!")})
        data = _with(data, **{k[:-1]: v for k, v in wired.items() if k.endswith("!")})
        conf = build_config(cls, _with(data, **{model_key: input_model}, output__dir=str(root / name),
                                       output__name="run"), source=f"stage {name}")
        if strict_accuracy and "accuracy" in conf.reward.weights and "strict" not in conf.reward.options.get("accuracy", {}):
            data = _with(data, reward__options__accuracy__strict=True)  # R1-Zero: the answer only from <answer>
            conf = build_config(cls, _with(data, **{model_key: input_model}, output__dir=str(root / name),
                                           output__name="run"), source=f"stage {name}")

        def body(stage_dir: Path):
            if before is not None:
                before(stage_dir)
            result = module.run(_resumable(conf))
            model_dir = stage_dir / "run" / produced
            if (model_dir / "config.json").exists():
                _link(model_dir, stage_dir / "final")
            return (str(stage_dir / "final") if (stage_dir / "final").exists() else None), _small(result)
        return Stage(name, module.__name__.rsplit(".", 1)[-1], input_model, body, conf, deps)

    def data_stage(name, fn, input_path, deps, settings):
        return Stage(name, "data", input_path, lambda d: (None, fn(d)), None, deps, settings)

    def student(stage: str) -> tuple[dict, Callable | None]:
        """The student of a distillation stage: a path, or derived from the teacher when the stage starts."""
        from alignkit.models.derive import derive_student, resolve_student_spec

        keep = resolve_student_spec(cfg.student_model)
        if keep is None:
            return {"student__path": str(Path(cfg.student_model).expanduser()) if "/" in cfg.student_model
                    else cfg.student_model}, None
        init = root / stage / "student_init"
        return {"student__path": str(init)}, lambda d: derive_student(final("final_rl"), init, keep_every=keep)

    rs_dir = root / "rejection_sampling" / "run"
    cold_file = str(root / "cold_start_data" / "data.jsonl") if cfg.sft_with_cold_start else None
    base = _expand(cfg.base_model)
    cold_settings = {"cold_start": cfg.cold_start.model_dump(), "seed": cfg.seed, "task": cfg.task,
                     "template": cfg.prompt_template, "levels": cfg.eval.levels, "base_model": base,
                     **({"second": cfg.second_language.model_dump()} if cfg.second_language.language else {})}
    plan = [
        recipe_stage("r1_zero", grpo, grpo.GRPOConfig, cfg.r1_zero, base, [], strict_accuracy=True),
        data_stage("cold_start_data", lambda d: cold_start_data(cfg, final("r1_zero"), d), final("r1_zero"),
                   ["r1_zero"], cold_settings),
        recipe_stage("cold_start_sft", sft, sft.SFTConfig,
                     _with(cfg.cold_start_sft, data__train_file=str(root / "cold_start_data" / "data.jsonl")), base,
                     ["cold_start_data"]),
        recipe_stage("reasoning_rl", grpo, grpo.GRPOConfig, cfg.reasoning_rl, final("cold_start_sft"), ["cold_start_sft"]),
        recipe_stage("rejection_sampling", rejection_sampling, rejection_sampling.RejectionSamplingConfig,
                     cfg.rejection_sampling, final("reasoning_rl"), ["reasoning_rl"]),
        data_stage("sft_data", lambda d: mixed_sft_data(cfg, str(rs_dir / "data.jsonl"), d, cold_file),
                   str(rs_dir / "data.jsonl"), ["rejection_sampling"] + (["cold_start_data"] if cold_file else []),
                   {"general_share": cfg.general_share, "general_source": cfg.general_source, "seed": cfg.seed,
                    "task": cfg.task, "template": cfg.prompt_template,
                    **({"with_cold_start": True} if cold_file else {}),
                    **({"min_language": cfg.sft_min_language} if cfg.sft_min_language is not None else {})}),
        recipe_stage("sft", sft, sft.SFTConfig,
                     _with(cfg.sft, data__train_file=str(root / "sft_data" / "mixed.jsonl")), base, ["sft_data"]),
    ]
    if cfg.preference_rm is not None:  # a trained preference reward model for final RL's general prompts
        pref = root / "preference_data"
        plan += [
            data_stage("preference_data", lambda d: preference_data(d), None, [],
                       {"rows": hashlib.sha256(json.dumps(general_chat_rows()).encode()).hexdigest()[:16]}),
            recipe_stage("preference_rm", reward_model, reward_model.RMConfig,
                         _with(cfg.preference_rm, data__train_file=str(pref / "train.jsonl"),
                               data__eval_file=str(pref / "eval.jsonl")), base, ["preference_data"]),
        ]
        plan[-1].evaluate = False
    plan.append(recipe_stage("final_rl", grpo, grpo.GRPOConfig, cfg.final_rl, final("sft"),
                             ["sft"] + (["preference_rm"] if cfg.preference_rm is not None else [])))
    for name in ("distill", "distill_logits"):
        data = getattr(cfg, name)
        if data is None:
            continue
        if name == "distill_logits":
            data = _defaults(data, mode="logits")
        path, before = student(name)
        deps = ["final_rl"]
        if name == "distill_logits" and plan[-1].name == "distill" and not _has(data, "teacher_data_from"):
            sampled = plan[-1].config  # the same teacher samples: train on distill's instead of sampling again
            probe = recipe_stage(name, distill, distill.DistillConfig, _with(data, **path), final("final_rl"), deps,
                                 model_key="teacher__path")
            if all(getattr(probe.config, k) == getattr(sampled, k) for k in ("prompts", "sampling", "reward", "select")):
                data, deps = _with(data, teacher_data_from=str(root / "distill" / "run" / "teacher_data")), deps + ["distill"]
        plan.append(recipe_stage(name, distill, distill.DistillConfig, _with(data, **path), final("final_rl"),
                                 deps, model_key="teacher__path", produced="student/final", before=before))
    return plan


def _expand(path: str) -> str:
    return str(Path(path).expanduser()) if path.startswith("~") else path


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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(stage: Stage, root: Path, upstream: dict[str, str]) -> str:
    """Hash of the stage's resolved settings (run paths relative to the run; the contents of the files it reads
    stand in for their names) and of the fingerprints of the stages it consumes."""
    settings = stage.config.model_dump(mode="json") if stage.config is not None else stage.settings
    files: dict[str, str] = {}

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and str(root) in value:
            rel = value.replace(str(root), "<run>")
            p = Path(value)
            if p.is_file():
                files[rel] = _file_digest(p)
            return rel
        return value

    payload = {"stage": stage.name, "recipe": stage.recipe, "settings": walk(settings), "files": files,
               "inputs": {d: upstream.get(d) for d in stage.deps}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The report compares each evaluated stage with the model it was trained from (paired, same problems).
COMPARED_WITH = {"r1_zero": "base", "cold_start_sft": "base", "reasoning_rl": "cold_start_sft", "sft": "base",
                 "final_rl": "sft", "distill": "final_rl", "distill_logits": "final_rl"}


class _Language:
    """Evaluation column: language consistency against the problem's own language (``only``: the problems asked
    in that language; None elsewhere, so the mean is over them)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def __call__(self, completion: str, *, language: str = "en", **_):
        from alignkit.rewards.language import language_consistency_reward

        if self.only is not None and language != self.only:
            return None
        return language_consistency_reward(completion, language=language)


class _VerifiedSteps:
    """Evaluation column: the share of completions whose <think> steps all check out, grounded, reaching the answer."""

    def __call__(self, completion: str, *, answer=None, question=None, **_):
        from alignkit.rewards.steps import check_steps

        return 1.0 if check_steps(completion, question=question, answer=answer).ok else 0.0


def evaluate_dir(model_dir: str | None, cfg: R1Config, *, general: bool | None = None) -> dict:
    """Held-out metrics of a model directory: accuracy, format, language, verified steps, length, parameters
    and (``general_source: chat``) the share of held-out general prompts answered plainly."""
    if model_dir is None:
        return {}
    from alignkit.evaluation import evaluate_model
    from alignkit.models import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(_expand(model_dir))
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    columns = {"steps": (_VerifiedSteps(), 0.0)}
    second = cfg.second_language.language
    if second is not None:  # each completion judged against its problem's language; the second one apart
        columns.update(language=(_Language(), 0.0), language_second=(_Language(only=second), 0.0))
    out = evaluate_model(model, tokenizer, eval_problems(cfg), max_new_tokens=cfg.eval.max_new_tokens,
                         rewards=columns, per_problem=True)
    out["steps"] = out.pop("reward/steps", 0.0)
    for key in ("language", "language_second"):
        if f"reward/{key}" in out:
            out[key] = out.pop(f"reward/{key}")
    for key in [k for k in out if k.startswith("reward/")]:
        out.pop(key)
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if (cfg.general_source == "chat" if general is None else general) and cfg.eval.general_n:
        out["general"] = general_answer_share(model, tokenizer, general_chat_rows()[1][:cfg.eval.general_n],
                                              cfg.eval.general_max_new_tokens)
    return out


def general_answer_share(model, tokenizer, rows: list[dict], max_new_tokens: int) -> float:
    """Share of general prompts answered greedily with some words and without the R1 reasoning format."""
    import re

    from alignkit.data import render_prompt
    from alignkit.rollout import generate

    out = generate(model, tokenizer, [render_prompt(tokenizer, r["prompt"]) for r in rows], num_samples=1,
                   max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    ok = [bool(re.search(r"[A-Za-z]{2,}", c)) and "<think>" not in c and "<answer>" not in c for c in out.completions]
    return sum(ok) / max(len(ok), 1)


class _RunLock:
    """One pipeline at a time per run directory: ``<run>/.lock`` holds the running process's pid. A second run
    while that process is alive is refused (found in a real run: a restarted pipeline cleared and redid the
    stages an earlier one was still writing); a lock whose process is gone is taken over."""

    def __init__(self, root: Path):
        self.path = root / ".lock"

    def __enter__(self):
        import os

        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
                os.kill(pid, 0)  # raises when no such process
                alive = pid != os.getpid()
            except (ValueError, ProcessLookupError):
                alive = False
            except PermissionError:  # it exists, under another user
                alive = True
            if alive:
                raise StageError(f"another pipeline (pid {pid}) is running in {self.path.parent}; wait for it or "
                                 f"stop it (kill {pid}) before rerunning, or delete {self.path} if it is not one")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def run(cfg: R1Config, *, only: list[str] | None = None) -> dict:
    """Run (or resume) the pipeline; returns the report rows. ``only``: stop after these stages (tests). Refused
    while another process runs the same pipeline directory (``_RunLock``)."""
    root = Path(cfg.output_dir).expanduser() / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    with _RunLock(root):
        return _run(cfg, only=only)


def _run(cfg: R1Config, *, only: list[str] | None = None) -> dict:
    from alignkit.pipelines.report import write_report

    seed_everything(cfg.seed)
    root = Path(cfg.output_dir).expanduser() / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(to_yaml(cfg))
    plan = stages(cfg, root)  # validates every stage's config before anything runs
    task_wiring(cfg, root, write=True)  # the prompt files the stages read (task / prompt_template)
    base_eval = root / "base_eval.json"
    base_key = hashlib.sha256(json.dumps({"base": cfg.base_model, "eval": cfg.eval.model_dump(), "task": cfg.task,
                                          "template": cfg.prompt_template, "general": cfg.general_source,
                                          "second": cfg.second_language.model_dump(exclude={"trace_share"}), "columns": 2},
                                         sort_keys=True).encode()).hexdigest()[:16]
    if not base_eval.exists() or json.loads(base_eval.read_text()).get("fingerprint") != base_key:
        t0 = time.perf_counter()
        evaluated = evaluate_dir(cfg.base_model, cfg)
        base_eval.write_text(json.dumps({"stage": "base", **evaluated, "wall_s": time.perf_counter() - t0,
                                         "fingerprint": base_key}))
    rows = [{k: v for k, v in json.loads(base_eval.read_text()).items() if k != "fingerprint"}]
    prints: dict[str, str] = {}
    redone: set[str] = set()
    times = {"base evaluation": rows[0].get("wall_s", 0.0)}  # every stage's, data stages included
    for stage in plan:
        stage_dir = root / stage.name
        manifest_path = stage_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        key = prints[stage.name] = fingerprint(stage, root, prints)
        changed_inputs = [d for d in stage.deps if d in redone]
        same = manifest.get("fingerprint") == key
        if manifest.get("finished") and same and not changed_inputs:
            print(f"[r1] {stage.name}: done earlier, skipped", flush=True)
        else:
            if manifest and not same:
                print(f"[r1] settings changed: rerunning {stage.name} (and later stages)", flush=True)
            elif manifest.get("finished"):
                print(f"[r1] {', '.join(changed_inputs)} was redone: rerunning {stage.name} (and later stages)", flush=True)
            if stage_dir.exists() and (manifest.get("finished") or not same):
                shutil.rmtree(stage_dir)  # outputs and checkpoints of other settings: never resumed from
            redone.add(stage.name)
            print(f"[r1] {stage.name} ({stage.recipe}) <- {stage.input}", flush=True)
            stage_dir.mkdir(parents=True, exist_ok=True)
            manifest = {"stage": stage.name, "recipe": stage.recipe, "input": stage.input, "code": code_version(),
                        "fingerprint": key, "inputs": {d: prints.get(d) for d in stage.deps},
                        "config": stage.config.model_dump(mode="json") if stage.config is not None else None,
                        "settings": stage.settings,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            manifest_path.write_text(json.dumps(manifest, indent=1))
            t0 = time.perf_counter()
            try:
                model_dir, result = stage.run(stage_dir)
            except StageError:
                raise
            except Exception as e:  # noqa: BLE001 -- re-raised with the stage's name
                raise StageError(f"stage {stage.name} failed: {type(e).__name__}: {e}") from e
            if result.get("interrupted"):  # SIGTERM inside the recipe: checkpoint saved, the stage is not done
                print(f"[r1] {stage.name} was interrupted (SIGTERM) with its checkpoint saved; the pipeline stops "
                      "here: rerun the same command to resume it", flush=True)
                return {"rows": rows, "root": str(root), "interrupted": stage.name}
            _check_output(stage.name, result)
            if not cfg.keep_checkpoints:  # the final model is saved: nothing resumes from these any more
                for ckpt in [p for p in stage_dir.rglob("checkpoints") if p.is_dir() and not p.is_symlink()]:
                    shutil.rmtree(ckpt)
            evaluated = evaluate_dir(model_dir, cfg) if stage.evaluate else {}
            manifest.update(result=result, model=model_dir, eval=evaluated, wall_s=time.perf_counter() - t0,
                            finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
        times[stage.name] = manifest.get("wall_s", 0.0)
        if manifest.get("eval"):
            rows.append({"stage": stage.name, **manifest["eval"], "wall_s": manifest["wall_s"],
                         **({"vs": COMPARED_WITH[stage.name]} if stage.name in COMPARED_WITH else {})})
        if only and stage.name == only[-1]:
            break
    write_report(rows, root, times=times)
    return {"rows": rows, "root": str(root)}


def _check_output(name: str, result: dict) -> None:
    """An empty stage output fails in that stage, naming the settings that make it non-empty."""
    if name == "rejection_sampling" and not result.get("kept"):
        raise StageError(f"stage rejection_sampling kept no completion (threshold {result.get('threshold')}, "
                         f"{result.get('samples')} samples of {result.get('prompts')} prompts, pass rate "
                         f"{result.get('pass_rate', 0):.1%}): lower rejection_sampling.select.threshold or raise "
                         "rejection_sampling.sampling.num_samples (or sampling.max_new_tokens)")
    if name.startswith("distill") and isinstance(result.get("teacher_data"), dict) and not result["teacher_data"].get("kept"):
        raise StageError(f"stage {name}: the teacher kept no verified sample; raise {name}.sampling.num_samples or "
                         f"lower {name}.select.threshold")
