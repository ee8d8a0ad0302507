"""``python -m benchmarks.requests --dump-asks``: the asks written so that another checkout, with
only the spec files and the JSON, rebuilds the very examples this one ranks."""

from __future__ import annotations

import json

from benchmarks.ranking import held_out
from benchmarks.requests import families, main
from ranker.data import load_spec


def test_dumped_asks_rebuild_the_examples(jentic_dir, tmp_path) -> None:
    out = tmp_path / "asks.json"
    assert main(["--jentic-dir", str(jentic_dir), "--dump-asks", str(out)]) == 0
    dumped = json.loads(out.read_text())
    expected = families(held_out(jentic_dir).workflows)
    assert {k: len(v) for k, v in dumped.items()} == {k: len(v) for k, v in expected.items()}
    for name in ("find id", "workflow"):  # the families with a history
        for ask, ex in zip(dumped[name], expected[name], strict=True):
            spec = load_spec(jentic_dir / ask["spec"])
            history = [spec.resolve(h["endpoint"], h["params"]) for h in ask["history"]]
            assert spec.spec_hash == ex.spec.spec_hash
            assert (ask["prompt"], ask["target"]) == (ex.prompt, ex.target)
            assert history == list(ex.history), ask
