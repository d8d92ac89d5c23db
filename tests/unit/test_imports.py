"""The pure packages stay pure: importing them pulls in no heavy framework (docs/design.md, dependency
rule)."""

import subprocess
import sys

HEAVY = ("transformers", "accelerate", "vllm", "deepspeed", "peft", "datasets")


def test_pure_packages_import_no_heavy_dependency():
    code = (
        "import sys, alignkit.losses, alignkit.advantages, alignkit.rewards\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure packages imported: {out.stdout.strip()}"


# Which alignkit packages each layer may import, at module level AND inside functions (docs/architecture.md).
# cli and pipelines may import anything below them; a key missing here may import only itself.
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

LAYERS = {
    "losses": set(), "advantages": {"losses"}, "rewards": set(), "config": set(), "monitoring": set(),
    "logprobs": {"losses"}, "data": {"config"}, "models": {"config", "logprobs", "data"},
    "rollout": {"config", "models", "logprobs", "data", "rewards"},
    "evaluation": {"data", "rewards", "rollout", "models", "logprobs"},
    "infra": {"config", "models"},
    "recipes": {"losses", "advantages", "logprobs", "rollout", "rewards", "data", "models", "infra", "config",
                "evaluation", "monitoring", "recipes"},
}
SRC = Path(__file__).resolve().parents[2] / "src" / "alignkit"


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alignkit"


def test_layering_holds_for_imports_inside_functions_too():
    bad = []
    for path in SRC.rglob("*.py"):
        layer = path.relative_to(SRC).parts[0].removesuffix(".py")
        if layer not in LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                if name.startswith("alignkit.") and _layer(name) not in LAYERS[layer] | {layer}:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name}")
    assert not bad, "layering broken:\n" + "\n".join(bad)
