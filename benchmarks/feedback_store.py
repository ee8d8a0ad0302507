"""What recording feedback costs: enqueueing a prediction's context on the request path, and an
acknowledged (committed, ``synchronous=FULL``) outcome.

    python -m benchmarks.feedback_store [--dir var] [--predictions 2000] [--outcomes 200]

The store is a fresh SQLite file in a temporary directory under ``--dir`` (the disk the service
would write to), removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from core.settings import PROJECT_ROOT, load_settings
from deployments.serving.feedback import FeedbackStore, prediction_context
from deployments.serving.pipeline import Pipeline
from deployments.serving.schemas import PredictRequest


async def run(directory: Path, predictions: int, outcomes: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(dir=directory))
    try:
        settings = load_settings(data_dir=str(tmp))
        store = FeedbackStore(settings.feedback_db_path)
        pipeline = Pipeline(settings)
        example = PROJECT_ROOT / "examples" / "request.json"
        request = PredictRequest.model_validate(json.loads(example.read_text()))
        response = await pipeline.predict(request)
        spec = await pipeline.c.store.resolve(spec=request.spec)
        candidates = [(i % len(spec.operations), {"bm25": 0.5, "dataflow": 1.0}, False) for i in range(30)]
        enqueue_us: list[float] = []
        for i in range(predictions):
            answer = response.model_copy(update={"prediction_id": f"p{i}"})
            start = time.perf_counter()
            store.record_prediction(prediction_context(request=request, response=answer, spec=spec,
                                                       candidates=candidates))
            enqueue_us.append((time.perf_counter() - start) * 1e6)
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # let the writer run, as between requests
        store.flush()
        ack_ms: list[float] = []
        for i in range(outcomes):
            start = time.perf_counter()
            await store.arecord_outcome(f"p{i}", accepted=True)
            ack_ms.append((time.perf_counter() - start) * 1e3)
        store.close()
        await pipeline.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def q(values: list[float], p: int) -> float:
        return statistics.quantiles(values, n=100)[p - 1]

    return {"enqueue_us_p50": q(enqueue_us, 50), "enqueue_us_p99": q(enqueue_us, 99),
            "ack_ms_p50": q(ack_ms, 50), "ack_ms_p99": q(ack_ms, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feedback_store",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=PROJECT_ROOT / "var")
    parser.add_argument("--predictions", type=int, default=2000)
    parser.add_argument("--outcomes", type=int, default=200)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    r = asyncio.run(run(args.dir, args.predictions, args.outcomes))
    print(f"enqueue a prediction's context: p50 {r['enqueue_us_p50']:.1f} us, "
          f"p99 {r['enqueue_us_p99']:.1f} us")
    print(f"acknowledged outcome: p50 {r['ack_ms_p50']:.2f} ms, p99 {r['ack_ms_p99']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
