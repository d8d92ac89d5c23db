"""`alignkit demo` works from an installed wheel: the presets and the bundled models travel with the package."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_presets_and_the_demo_finds_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("alignkit-*.whl"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    probe = ("import alignkit, alignkit.cli as c; from alignkit.models import resolve_model_path; "
             "p = c._config_path(c.DEMO_CONFIG); print(alignkit.__file__); print(p); print(p.is_file()); "
             "print(resolve_model_path('bundled'))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    module, preset, exists, bundled = run.stdout.split()
    assert module.startswith(str(site)) and preset.startswith(str(site)) and exists == "True"
    assert bundled.startswith(str(site))
