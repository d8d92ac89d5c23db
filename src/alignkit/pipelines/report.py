"""The pipeline report: a table of held-out metrics after every stage, as Markdown, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [("accuracy", "accuracy", "{:.1%}"), ("format", "format", "{:.1%}"), ("language", "language", "{:.1%}"),
           ("length", "mean length (tokens)", "{:.1f}"), ("wall_s", "wall time (s)", "{:.0f}")]


def table(rows: list[dict]) -> str:
    """Markdown table, one row per evaluated stage."""
    head = "| stage | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    body = ["| " + r["stage"] + " | " + " | ".join(fmt.format(r[k]) if k in r else "" for k, _, fmt in COLUMNS) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])


def write_report(rows: list[dict], root: Path) -> str:
    """Print and save report.md / report.json / report.png under ``root``; returns the table."""
    text = table(rows)
    total = sum(r.get("wall_s", 0.0) for r in rows)
    (root / "report.json").write_text(json.dumps(rows, indent=1))
    (root / "report.md").write_text(f"# R1 pipeline report\n\n{text}\n\nTotal wall time: {total:.0f} s\n")
    _plot(rows, root / "report.png")
    print(f"\n{text}\n\ntotal wall time {total:.0f} s; report in {root}/report.md")
    return text


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r["stage"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.5))
    for key in ("accuracy", "format", "language"):
        ax.plot(stages, [r.get(key, float("nan")) for r in rows], marker="o", label=key)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("held-out share")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("R1 pipeline: held-out metrics after each stage")
    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
