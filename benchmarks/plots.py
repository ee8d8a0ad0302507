"""The accuracy plots, redrawn from the benchmarks' committed JSON (no model, no Ray).

    python -m benchmarks.plots [--results benchmarks/results]

- ``accuracy.png``: hit@1 and hit@3 per request family of ``requests.json`` (direct, direct in
  one call, as typed, direct + values, find id, find id named, workflow), BM25 over the whole spec beside
  the generator's order and the service (``python -m benchmarks.requests`` writes the JSON);
- ``llm_weight.png``: hit@1 of the ranker against ``llm_weight``, one line per simulated LLM
  accuracy, from ``llm_path.json`` (``python -m benchmarks.llm_path``), the shipped weight marked.

matplotlib is the ``bench`` extra (``pip install -e '.[bench]'``); without it this says so in one
line. The bars are drawn by :func:`tools.plotting.metric_bars`, shared with ``opensesame evaluate
--plot``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from core.settings import Settings
from tools.plotting import PlotUnavailable, metric_bars, pyplot

RESULTS = Path(__file__).resolve().parent / "results"

FAMILIES = ("direct", "direct, one call", "direct, as typed", "direct + values", "find id",
            "find id, named", "workflow")
# requests.json's method names -> the legend's
METHODS = {"bm25 (whole spec)": "BM25 over the whole spec", "generator order": "generator's order",
           "service": "service (trained ranker)"}
SIMULATED = re.compile(r"simulated, right (\d+)% of the time")


def shipped_llm_weight() -> float:
    """The weight the service ships with (core.settings' default)."""
    return float(Settings.model_fields["llm_weight"].default)


def plot_accuracy(requests: dict[str, Any], path: Path) -> Path:
    """Grouped bars of hit@1 and hit@3 per request family, BM25 vs generator vs service."""
    panels = {
        metric: {family: {label: requests[family][method][metric] for method, label in METHODS.items()}
                 for family in FAMILIES if family in requests}
        for metric in ("hit@1", "hit@3")
    }
    meta = requests.get("meta", {})
    return metric_bars(
        panels, path,
        title=f"What users type, held-out APIs: model {meta.get('model_version', '?')}\n"
              f"({meta.get('command', 'python -m benchmarks.requests')}; a target the generator "
              "missed is a miss)")


def plot_llm_weight(llm_path: dict[str, Any], path: Path, *, shipped: float | None = None) -> Path:
    """hit@1 against llm_weight, one line per simulated LLM accuracy, the shipped weight marked."""
    plt = pyplot()
    shipped = shipped_llm_weight() if shipped is None else shipped
    curves: list[tuple[int, list[float], list[float]]] = []
    for name, llm in llm_path["llms"].items():
        m = SIMULATED.fullmatch(name)
        if not m:
            continue
        pts = sorted(
            (float(row.removeprefix("ranker, llm_weight ")), v["hit@1"])
            for row, v in llm["rows"].items() if row.startswith("ranker, llm_weight ")
        )
        curves.append((int(m.group(1)), [w for w, _ in pts], [h for _, h in pts]))
    if not curves:
        raise ValueError("no simulated LLM in llm_path.json")
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    cmap = plt.get_cmap("viridis")
    for i, (accuracy, ws, hits) in enumerate(sorted(curves)):  # legend in order of accuracy
        ax.plot(ws, hits, "o-", color=cmap(i / max(1, len(curves) - 1)),
                label=f"LLM right {accuracy} % of the time")
    none = llm_path["llms"].get("no LLM (retrieval only)", {}).get("rows", {}).get("ranker, llm_weight 0")
    if none:
        ax.axhline(none["hit@1"], color="grey", lw=1, ls="--",
                   label=f"no LLM (retrieval only): {none['hit@1']:.3f}")
    ax.axvline(shipped, color="black", lw=0.8, ls=":", label=f"shipped llm_weight {shipped:g}")
    ax.annotate(f"shipped\nllm_weight {shipped:g}", (shipped, 1.0), xytext=(4, -4),
                textcoords="offset points", va="top", fontsize=8)
    ax.set_xlabel("llm_weight (the LLM's share of the score)")
    ax.set_ylabel("hit@1")
    ax.set_ylim(0, 1.02)
    ax.grid(lw=0.4, alpha=0.5)
    meta = llm_path.get("meta", {})
    command = meta.get("command", "python -m benchmarks.llm_path")
    ax.set_title(f"LLM weight: hit@1 on {meta.get('steps', '?')} steps of {meta.get('apis', '?')} "
                 f"held-out APIs, model {meta.get('model_version', '?')}\n"
                 f"(LLM simulated at the HTTP boundary; {command})",
                 fontsize=9)
    # Outside the axes: the legend never covers a point.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON is and the PNGs go")
    args = p.parse_args(argv)
    try:
        for out in (
            plot_accuracy(json.loads((args.results / "requests.json").read_text()),
                          args.results / "accuracy.png"),
            plot_llm_weight(json.loads((args.results / "llm_path.json").read_text()),
                            args.results / "llm_weight.png"),
        ):
            print(f"wrote {out}")
    except PlotUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
