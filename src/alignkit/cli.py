"""Command line: ``alignkit <recipe> -c CONFIG key.sub=value ...``.

``alignkit --help`` lists the commands; ``alignkit <recipe> --help`` lists every option with the default the
recipe really uses and, for a choice, its allowed values; ``alignkit pipeline r1 --help`` adds every stage's
keys; ``alignkit --version`` prints the version.

Errors the user can fix (a bad or missing config, bad data, a run directory already in use, a missing file,
a ValueError raised while setting up, before the training loop) print one line, ``alignkit <cmd>: error:
...``, and exit 2. A run stopped by its non-finite guard prints its one line and exits 1. A second
SIGTERM/SIGINT exits 128 + the signal number after one line naming the checkpoint to resume from. Anything
else raised inside the training loop is a bug: it keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import alignkit
from alignkit.config import ConfigError, describe, load_config
from alignkit.data.schemas import DataError
from alignkit.infra.checkpoint import StopNow, latest_checkpoint
from alignkit.infra.progress_bar import quiet_library_progress
from alignkit.infra.rundir import RunDirError
from alignkit.rewards.errors import RewardFailureError

# Errors that name what the user must fix: one line, exit 2, wherever they are raised.
USER_ERRORS = (ConfigError, DataError, RunDirError, FileNotFoundError)

# command -> (module, config class name, one-line description)
RECIPES = {
    "sft": ("alignkit.recipes.sft", "SFTConfig", "supervised fine-tuning on prompt/completion, messages or text"),
    "grpo": ("alignkit.recipes.grpo", "GRPOConfig", "GRPO with verifiable rule-based rewards"),
    "rejection-sample": ("alignkit.recipes.rejection_sampling", "RejectionSamplingConfig",
                         "sample N completions per prompt, keep the verified ones as an SFT dataset"),
    "distill": ("alignkit.recipes.distill", "DistillConfig", "a teacher's verified samples (or logits) train a smaller student"),
    "rm": ("alignkit.recipes.reward_model", "RMConfig", "reward model (Bradley-Terry) on prompt/chosen/rejected pairs"),
    "dpo": ("alignkit.recipes.dpo", "DPOConfig", "direct preference optimization on prompt/chosen/rejected pairs"),
    "kto": ("alignkit.recipes.kto", "KTOConfig", "KTO on unpaired feedback: prompt/completion/label (or split pairs)"),
    "online-dpo": ("alignkit.recipes.online_dpo", "OnlineDPOConfig",
                   "online DPO: best vs worst of G policy samples per prompt, scored by rewards or a reward model"),
    "ppo": ("alignkit.recipes.ppo", "PPOConfig", "PPO (RLHF): critic, GAE, per-token KL penalty, rule or reward-model reward"),
}
PIPELINES = {"r1": ("alignkit.pipelines.r1", "R1Config", "the DeepSeek-R1 multi-stage pipeline")}
DEMO_CONFIG = "configs/pipelines/r1_tiny.yaml"


def _option_lines(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  " + (f"{d}  " if d else "") + f"(default: {v})" for k, v, d in rows)


def _recipe_parser(name: str, module: str, cls_name: str, doc: str) -> argparse.ArgumentParser:
    mod = importlib.import_module(module)
    cls = getattr(mod, cls_name)
    epilog = f"config keys (set in the YAML file or as key=value overrides):\n{_option_lines(describe(cls))}"
    if hasattr(mod, "stages"):
        epilog += "\n\n" + _stage_help(mod, cls)
    parser = argparse.ArgumentParser(
        prog=f"alignkit {name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    parser.add_argument("-c", "--config", help="YAML preset (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.set_defaults(_cls=cls, _module=module)
    return parser


def stage_defaults(mod, cls) -> list[tuple[str, str, object, set[str]]]:
    """(stage, recipe command, config the stage runs with by default, keys the pipeline sets) for every recipe
    stage of a pipeline module (one with ``stages(cfg, root)``) whose config is a field of ``cls``: what
    ``alignkit pipeline <name> --help`` lists. A key is "set by the pipeline" when it differs from the stage's
    own config section built alone, or follows a top-level string of the pipeline config (base_model, ...)."""
    from alignkit.config import build_config

    def plan(cfg):
        root = Path(getattr(cfg, "output_dir", "runs")) / getattr(cfg, "name", "")
        return {s.name: s for s in mod.stages(cfg, root) if s.config is not None and s.name in cls.model_fields}

    cfg = cls()
    probe = cls(**{k: f"<{k}>" for k, f in cls.model_fields.items()
                   if isinstance(getattr(cfg, k), str) and f.annotation is str})  # free strings, not choices
    commands = {m.rsplit(".", 1)[-1]: c for c, (m, _, _) in RECIPES.items()}
    out = []
    for name, stage in plan(cfg).items():
        rows = describe(stage.config)
        others = (describe(build_config(type(stage.config), getattr(cfg, name))), describe(plan(probe)[name].config))
        wired = {k for i, (k, v, _) in enumerate(rows) if any(o[i][1] != v for o in others)}
        out.append((name, commands.get(stage.recipe, stage.recipe), stage.config, wired))
    return out


def _stage_help(mod, cls) -> str:
    """Each recipe stage's keys with the defaults it really runs with; keys the pipeline sets are marked."""
    parts = ["stage keys (<stage>.<key>=value; the stage's recipe documents each key):"]
    for stage, command, conf, wired in stage_defaults(mod, cls):
        rows = [(f"{stage}.{k}", v, "set by the pipeline" if k in wired else "") for k, v, _ in describe(conf)]
        parts.append(f"\n{stage}.* : {command} options (see alignkit {command} --help)\n{_option_lines(rows)}")
    return "\n".join(parts)


def _run_recipe(name: str, argv: list[str]) -> int:
    module, cls_name, doc = RECIPES[name]
    args = _recipe_parser(name, module, cls_name, doc).parse_args(argv)
    cfg = load_config(args._cls, args.config, args.overrides)
    try:
        summary = importlib.import_module(args._module).run(cfg)
    except StopNow as err:
        err.hint = _resume_hint(cfg)
        raise
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _resume_hint(cfg) -> str:
    """Where a stopped run continues from: its newest complete checkpoint, or nowhere."""
    out = getattr(cfg, "output", None)
    if out is None or "resume" not in type(out).model_fields:
        return "nothing of the step in progress was saved"
    ckpt = latest_checkpoint(Path(out.dir) / out.name)
    if ckpt is None:
        return "no checkpoint was saved"
    return f"resume from {ckpt} with output.resume=true"


def _pipeline(argv: list[str], *, prog: str = "alignkit pipeline") -> int:
    if not argv or argv[0] in ("-h", "--help") and len(argv) == 1:
        names = "\n".join(f"  {n:<6} {d}" for n, (_, _, d) in PIPELINES.items())
        print(f"usage: {prog} <name> -c CONFIG [key=value ...]\n\npipelines:\n{names}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in PIPELINES:
        print(f"alignkit: unknown pipeline {name!r}; known: {', '.join(PIPELINES)}", file=sys.stderr)
        return 2
    module, cls_name, doc = PIPELINES[name]
    args = _recipe_parser(f"pipeline {name}", module, cls_name, doc).parse_args(rest)
    cfg = load_config(args._cls, args.config, args.overrides)
    try:
        importlib.import_module(args._module).run(cfg)
    except StopNow as err:
        err.hint = "run the same command again to resume the pipeline"
        raise
    return 0


def _demo(argv: list[str]) -> int:
    """The main job: the R1 pipeline on the bundled tiny model (configs/pipelines/r1_tiny.yaml)."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: alignkit demo [key=value ...]\n\n{_demo.__doc__}\nOverrides apply to the pipeline config.")
        return 0
    print("alignkit demo: the DeepSeek-R1 pipeline (R1-Zero, cold start, reasoning RL, rejection sampling, SFT, "
          "final RL, distillation) on the bundled tiny model, on CPU.")
    return _pipeline(["r1", "-c", str(_config_path(DEMO_CONFIG)), *argv])


def _config_path(rel: str):
    """A shipped preset: ``configs/...`` lives inside the package (``alignkit/configs``; the repository's
    top-level ``configs`` is a link to it), so the demo runs from a checkout and from an installed wheel."""
    from pathlib import Path

    return Path(__file__).resolve().parent / rel


def _eval(argv: list[str]) -> int:
    """Held-out accuracy, R1-format compliance, language consistency and mean completion length of a model
    directory (plain transformers layout), answering greedily through its chat template."""
    from alignkit.evaluation import EVAL_LEVELS, arithmetic_eval_set, evaluate_model
    from alignkit.models import load_causal_lm, load_tokenizer, resolve_model_path

    parser = argparse.ArgumentParser(prog="alignkit eval", description=_eval.__doc__)
    parser.add_argument("--model", required=True, help="model directory, or 'bundled' for the shipped base model")
    parser.add_argument("--task", default="arithmetic", choices=["arithmetic"], help="evaluation task")
    parser.add_argument("--levels", default=",".join(map(str, EVAL_LEVELS)), help="arithmetic levels, e.g. 1,2,3")
    parser.add_argument("-n", type=int, default=200, help="held-out problems (seeded, never seen in training)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest answer")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    problems = arithmetic_eval_set(tuple(int(x) for x in args.levels.split(",")), n=args.n)
    scores = evaluate_model(load_causal_lm(path), load_tokenizer(path), problems, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(scores))
    else:
        print(f"{path} on {len(problems)} held-out arithmetic problems (levels {args.levels}):")
        for k, v in scores.items():
            print(f"  {k:<10} {v:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = "\n".join(f"  {n:<17} {d}" for n, (_, _, d) in RECIPES.items())
    usage = (f"usage: alignkit <command> [-c CONFIG] [key=value ...]\n\ncommands:\n{commands}\n"
             f"  {'eval':<17} held-out accuracy and format compliance of a model directory\n"
             f"  {'pipeline r1':<17} the DeepSeek-R1 multi-stage pipeline (alignkit pipeline r1 -c CONFIG)\n"
             f"  {'demo':<17} the main job: the R1 pipeline on the bundled tiny model\n\n`alignkit <command> --help` lists its options; "
             "`alignkit --version` prints the version.")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"alignkit {alignkit.__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if not sys.stderr.isatty():  # a log file or CI: no per-load "Loading weights" bars (progress lines instead)
        quiet_library_progress()
    prog = f"alignkit {name}" + (f" {rest[0]}" if name == "pipeline" and rest and not rest[0].startswith("-") else "")
    try:
        return _dispatch(name, rest, usage)
    except USER_ERRORS as err:
        return _fail(prog, err, 2)
    except FloatingPointError as err:  # the non-finite guard stopped the run: its message says what to do
        return _fail(prog, err, 1)
    except RewardFailureError as err:  # most samples failed to score: the message names the component and error
        return _fail(prog, err, 1)
    except ValueError as err:
        if getattr(err, "during_training", False):
            raise  # raised inside the training loop: a bug, keep the traceback
        return _fail(prog, err, 2)
    except StopNow as err:
        print(f"{prog}: {err}; {getattr(err, 'hint', 'nothing of the step in progress was saved')}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _fail(prog: str, err: BaseException, code: int) -> int:
    """Print ``err`` as one line (newlines folded) after ``<prog>: error:``; return ``code``."""
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return code


def _dispatch(name: str, rest: list[str], usage: str) -> int:
    if name == "demo":
        return _demo(rest)
    if name == "eval":
        return _eval(rest)
    if name == "pipeline":
        return _pipeline(rest)
    if name not in RECIPES:
        print(f"alignkit: unknown command {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    return _run_recipe(name, rest)


if __name__ == "__main__":
    sys.exit(main())
