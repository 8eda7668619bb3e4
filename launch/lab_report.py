"""The lab's plots: a person looks at a run rather than reads its JSON.

Three PNG files from ``summary.json`` (drawn with matplotlib's Agg backend: no display):
``accuracy.png`` (the global model's test accuracy per round, and each class-incremental
task's), ``participation.png`` (per group, the share of the clients asked whose update
counted) and ``round_time.png`` (per group, the mean time a reported task took on its
combiner's clock, beside the round's own time). A failed round shows as a gap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # before pyplot: files, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SIZE = (7.5, 4.0)
DPI = 110
#: one marker and line style per group, so groups whose lines coincide stay visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLES = ("-", "--", "-.", ":")


def _look(i: int) -> dict[str, Any]:
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": STYLES[(i // len(MARKERS)) % len(STYLES)],
            "markersize": 7 - 1.5 * (i % 3), "alpha": 0.9}


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Any, ax: Any, path: Path) -> str:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def write_plots(summary: Mapping[str, Any], out: Path) -> list[str]:
    """Write the plots into ``out``; their file names."""
    rows = summary["rounds"]
    rounds = [r["round"] for r in rows]
    groups = list(summary.get("groups") or {})
    written = []

    fig, ax = _figure("Test accuracy of the global model", "accuracy")
    ax.plot(rounds, [r["test_accuracy"] if r["status"] == "success" else None for r in rows],
            marker="o", color="black", label="all classes")
    tasks = sorted({int(k) for r in rows for k in r.get("task_accuracy") or {}})
    for task in tasks:
        ax.plot(rounds, [(r.get("task_accuracy") or {}).get(str(task)) for r in rows], marker=".",
                linestyle="--", label=f"task {task}")
    ax.set_ylim(0, 1)
    written.append(_save(fig, ax, out / "accuracy.png"))

    fig, ax = _figure("Participation per group (updates counted / clients asked)", "share of the clients asked")
    for i, g in enumerate(groups):
        values = []
        for r in rows:
            figures = r["groups"].get(g) or {}
            values.append(figures["updated"] / figures["chosen"] if figures.get("chosen") else None)
        ax.plot(rounds, values, label=f"{g} ({summary['groups'][g]['clients']} clients)", **_look(i))
    ax.set_ylim(0, 1.05)
    written.append(_save(fig, ax, out / "participation.png"))

    fig, ax = _figure("Round time and task time per group", "seconds")
    ax.plot(rounds, [r["seconds"] if r["status"] == "success" else None for r in rows], color="black",
            linestyle="--", label="round (reducer)")
    for i, g in enumerate(groups):
        ax.plot(rounds, [(r["groups"].get(g) or {}).get("task_seconds_mean") for r in rows],
                label=f"{g}: mean task", **_look(i))
    ax.set_ylim(bottom=0)
    written.append(_save(fig, ax, out / "round_time.png"))
    return written
