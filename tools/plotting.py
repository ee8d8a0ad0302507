"""Grouped bar charts of ranking metrics: the one home of the bar drawing.

``opensesame evaluate --plot`` and ``python -m benchmarks.plots`` (accuracy.png) both draw through
:func:`metric_bars`; it lives in ``tools`` because tools may not import benchmarks
(tests/test_layers.py) while benchmarks may import tools. matplotlib is an optional extra
(``pip install -e '.[bench]'``), imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MISSING = "matplotlib is not installed (pip install -e '.[bench]'): no plot"


class PlotUnavailable(RuntimeError):
    """matplotlib is missing; str() is the one line to print."""


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or PlotUnavailable."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(MISSING) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    path: Path,
    *,
    title: str,
) -> Path:
    """One panel per metric, bars grouped by row group, one colour per series.

    ``panels[metric][group][series]`` is a value in [0, 1] (None or absent: no bar). Every bar
    carries its value; the legend sits outside the axes, right of the last panel. Writes ``path``
    (PNG) and returns it.
    """
    plt = pyplot()
    groups: list[str] = []
    series: list[str] = []
    for by_group in panels.values():
        for group, by_series in by_group.items():
            if group not in groups:
                groups.append(group)
            series += [s for s in by_series if s not in series]
    if not groups or not series:
        raise ValueError("nothing to plot")
    width = 0.8 / len(series)
    panel_width = 1.0 + 0.45 * len(groups) * len(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + len(panels) * panel_width, 4.2), sharey=True,
                             squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (metric, by_group) in zip(axes[0], panels.items(), strict=True):
        for i, name in enumerate(series):
            xs, ys = [], []
            for g, group in enumerate(groups):
                value = by_group.get(group, {}).get(name)
                if value is not None:
                    xs.append(g + (i - (len(series) - 1) / 2) * width)
                    ys.append(value)
            if not xs:
                continue
            bars = ax.bar(xs, ys, width * 0.95, label=name, color=f"C{i}")
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=1)
            handles.setdefault(name, bars)
        ax.set_title(metric, fontsize=10)
        ax.set_xticks(range(len(groups)), _wrap(groups), fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
        ax.set_axisbelow(True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # Outside the axes: the legend never covers a bar.
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(labels: Sequence[str]) -> list[str]:
    return [label.replace(" + ", "\n+ ") for label in labels]


def split_rows(
    rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``evaluate``'s rows ("group: series" -> metrics) as :func:`metric_bars`' panels."""
    panels: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in metrics}
    for name, values in rows.items():
        group, _, label = name.partition(": ")
        if not label:
            group, label = "", name
        for m in metrics:
            panels[m].setdefault(group, {})[label] = values.get(m)
    return panels
