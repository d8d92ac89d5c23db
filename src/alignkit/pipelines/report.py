"""The pipeline report: a table of held-out metrics after every stage, as Markdown, JSON and a plot.

Uncertainty. Each accuracy carries a 95% Wilson interval over the ``n`` held-out problems; each stage is
compared with the stage it was trained from (``vs``: R1-Zero with the base model, reasoning RL with the
cold-start SFT, final RL with the second SFT, a student with the teacher) on the *same* problems, so the
difference gets a paired interval: d_i = correct_i(stage) - correct_i(input) in {-1, 0, 1},
mean(d) +- 1.96 * sd(d) / sqrt(n) (sd with ddof 1; normal approximation, which is fair from n ~ 30 on).
A paired interval is narrower than two independent ones because both models answer the same questions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = [("accuracy", "accuracy", "{:.1%}"), ("format", "format", "{:.1%}"), ("language", "language", "{:.1%}"),
           ("language_second", "language (2nd-language prompts)", "{:.1%}"),
           ("steps", "verified steps", "{:.1%}"), ("general", "general answered", "{:.1%}"),
           ("length", "mean length (tokens)", "{:.1f}"), ("params_m", "params (M)", "{:.1f}"),
           ("wall_s", "wall time (s)", "{:.0f}")]
TEACHER, STUDENTS = "final_rl", ("distill", "distill_logits")
RL_STAGES = ("r1_zero", "reasoning_rl", "final_rl")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval of a proportion k/n:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).

    >>> [round(x, 4) for x in wilson_interval(6, 60)]
    [0.0466, 0.2015]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def paired_difference(after: list[int], before: list[int], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high) of d_i = after_i - before_i over the same problems: mean(d) -+ z * sd(d) / sqrt(n),
    sd with ddof 1 (0 for n = 1).

    >>> [round(x, 4) for x in paired_difference([1, 1, 0, 1], [0, 1, 0, 0])]  # d = 1,0,0,1: sd 0.57735, se 0.28868
    [0.5, -0.0658, 1.0658]
    """
    if len(after) != len(before) or not after:
        raise ValueError(f"paired difference needs two equal, non-empty lists (got {len(after)} and {len(before)})")
    d = [a - b for a, b in zip(after, before)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _accuracy_ci(row: dict) -> str:
    if "correct" not in row:
        return ""
    lo, hi = wilson_interval(sum(row["correct"]), len(row["correct"]))
    return f"{lo:.1%}-{hi:.1%}"


def _vs_input(row: dict, by: dict[str, dict]) -> str:
    before = by.get(row.get("vs") or "")
    if before is None or "correct" not in row or len(before.get("correct", [])) != len(row["correct"]):
        return ""
    mean, lo, hi = paired_difference(row["correct"], before["correct"])
    return f"{100 * mean:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) vs {row['vs']}"


def table(rows: list[dict]) -> str:
    """Markdown table, one row per evaluated stage: the metrics, the accuracy's 95% interval and the paired
    change of accuracy against the stage's input (points, 95% interval)."""
    by = {r["stage"]: r for r in rows}
    extra = any("correct" in r for r in rows)
    titles = [title for _, title, _ in COLUMNS] + (["accuracy 95% CI", "accuracy change, points (95% CI)"] if extra else [])
    head = "| stage | " + " | ".join(titles) + " |"
    sep = "|---|" + "---|" * len(titles)
    body = []
    for r in rows:
        cells = [fmt.format(r[k]) if k in r else "" for k, _, fmt in COLUMNS]
        if extra:
            cells += [_accuracy_ci(r), _vs_input(r, by)]
        body.append("| " + r["stage"] + " | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def rl_verdicts(rows: list[dict]) -> str:
    """One line per RL stage: does it raise held-out accuracy over its input, by the paired 95% interval?"""
    by = {r["stage"]: r for r in rows}
    lines = []
    for name in RL_STAGES:
        row = by.get(name)
        before = by.get((row or {}).get("vs") or "")
        if not row or not before or "correct" not in row or "correct" not in before:
            continue
        mean, lo, hi = paired_difference(row["correct"], before["correct"])
        verdict = ("no problem changed" if lo == hi == 0 else "raises accuracy (the interval excludes 0)" if lo > 0 else
                   "lowers accuracy (the interval excludes 0)" if hi < 0 else "no significant change (the interval spans 0)")
        lines.append(f"- {name}: {row['accuracy']:.1%} vs {before['accuracy']:.1%} ({row['vs']}), "
                     f"{100 * mean:+.1f} points, 95% CI ({100 * lo:+.1f}, {100 * hi:+.1f}) on {len(row['correct'])} "
                     f"problems: {verdict}")
    return "\n".join(lines)


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


def wall_time(rows: list[dict], times: dict[str, float] | None) -> tuple[float, str]:
    """The pipeline's wall time from scratch: every stage's (``times``: stage -> seconds, the data stages and
    the base evaluation included; else the table rows') -> (total seconds, one line listing them)."""
    times = times if times is not None else {r["stage"]: r.get("wall_s", 0.0) for r in rows}
    total = sum(times.values())
    parts = ", ".join(f"{name} {sec:.0f}" for name, sec in times.items())
    return total, f"Total wall time: {total:.0f} s ({total / 60:.1f} min; every stage, in s: {parts})"


def write_report(rows: list[dict], root: Path, *, times: dict[str, float] | None = None) -> str:
    """Print and save report.md / report.json / report.png under ``root``; returns the table. The table's
    wall time is each model stage's own (with its evaluation); the total adds the data stages (``times``)."""
    text = table(rows)
    total, total_line = wall_time(rows, times)
    compare = students_vs_teacher(rows)
    verdicts = rl_verdicts(rows)
    (root / "report.json").write_text(json.dumps(rows, indent=1))
    (root / "report.md").write_text(f"# R1 pipeline report\n\n{text}\n\n{total_line}\n"
                                    + (f"\nRL stages against their input (paired, same held-out problems):\n\n{verdicts}\n"
                                       if verdicts else "")
                                    + (f"\nStudents vs the teacher:\n\n{compare}\n" if compare else ""))
    _plot(rows, root / "report.png")
    print(f"\n{text}\n" + (f"\n{verdicts}\n" if verdicts else "")
          + f"\n{total_line}\nreport in {root}/report.md")
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
