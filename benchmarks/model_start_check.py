"""What verifying the model costs a starting Ranker replica (deployments/serving/model_swap.py,
``verify``): the check in a child process the first time these bytes are seen, then the marked
case (a restart or a scale-up: only the file's sha256).

    nice -n 5 python -m benchmarks.model_start_check        # ~10 s

Writes benchmarks/results/model_start_check.json, with the load average it ran at: on the shared
2-CPU machine the child's imports and LightGBM's parse slow down with the neighbours' load.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from core.scorer import default_model_path
from deployments.serving.model_swap import verify

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = 5


def main() -> dict[str, object]:
    child_ms, marked_ms = [], []
    with tempfile.TemporaryDirectory() as root:
        for i in range(RUNS):
            marks = Path(root) / str(i)  # a fresh directory: nothing verified yet
            t = time.perf_counter()
            verify(default_model_path(), verified_dir=marks)
            child_ms.append(round((time.perf_counter() - t) * 1000, 1))
            t = time.perf_counter()
            verify(default_model_path(), verified_dir=marks)
            marked_ms.append(round((time.perf_counter() - t) * 1000, 2))
    result: dict[str, object] = {
        "load_average_1m": round(os.getloadavg()[0], 1),
        "child_check_ms_median": statistics.median(child_ms),
        "child_check_ms_runs": child_ms,
        "marked_ms_median": statistics.median(marked_ms),
        "marked_ms_runs": marked_ms,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_start_check.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
