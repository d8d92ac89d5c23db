"""The pure packages stay pure: importing them pulls in no heavy framework (DESIGN.md, dependency rule)."""

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
