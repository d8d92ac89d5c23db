"""The pipeline report: a table of held-out metrics after every stage, as Markdown, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [("accuracy", "accuracy", "{:.1%}"), ("format", "format", "{:.1%}"), ("language", "language", "{:.1%}"),
           ("steps", "verified steps", "{:.1%}"), ("general", "general answered", "{:.1%}"),
           ("length", "mean length (tokens)", "{:.1f}"), ("params_m", "params (M)", "{:.1f}"),
           ("wall_s", "wall time (s)", "{:.0f}")]
TEACHER, STUDENTS = "final_rl", ("distill", "distill_logits")


def table(rows: list[dict]) -> str:
    """Markdown table, one row per evaluated stage."""
    head = "| stage | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    body = ["| " + r["stage"] + " | " + " | ".join(fmt.format(r[k]) if k in r else "" for k, _, fmt in COLUMNS) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])


def students_vs_teacher(rows: list[dict]) -> str:
    """One line per student stage: its accuracy and size against the teacher's (final_rl)."""
    by = {r["stage"]: r for r in rows}
    teacher = by.get(TEACHER)
    if not teacher or "accuracy" not in teacher:
        return ""
    lines = []
    for name in STUDENTS:
        st = by.get(name)
        if st and "accuracy" in st:
            size = (f", {st['params_m']:.1f}M vs {teacher['params_m']:.1f}M parameters"
                    if "params_m" in st and "params_m" in teacher else "")
            lines.append(f"- {name}: accuracy {st['accuracy']:.1%} vs the teacher's {teacher['accuracy']:.1%}{size}")
    return "\n".join(lines)


def write_report(rows: list[dict], root: Path) -> str:
    """Print and save report.md / report.json / report.png under ``root``; returns the table."""
    text = table(rows)
    total = sum(r.get("wall_s", 0.0) for r in rows)
    compare = students_vs_teacher(rows)
    (root / "report.json").write_text(json.dumps(rows, indent=1))
    (root / "report.md").write_text(f"# R1 pipeline report\n\n{text}\n\nTotal wall time: {total:.0f} s\n"
                                    + (f"\nStudents vs the teacher:\n\n{compare}\n" if compare else ""))
    _plot(rows, root / "report.png")
    print(f"\n{text}\n\ntotal wall time {total:.0f} s; report in {root}/report.md")
    return text


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r["stage"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.5))
    for key in ("accuracy", "format", "language", "steps"):
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
