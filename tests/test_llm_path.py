"""benchmarks.llm_path on a few held-out APIs: simulated LLMs over the real HTTP client (a mock
transport at the HTTP boundary), the serving generator, features, shipped model and blend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import llm_path


@pytest.fixture(scope="module")
def results(jentic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("llm_path")
    assert llm_path.main(["--jentic-dir", str(jentic_dir), "--max-apis", "9", "--simulate", "0,1",
                          "--weights", "0,0.5", "--out", str(out)]) == 0
    assert (out / "llm_path.md").read_text().startswith("`python -m benchmarks.llm_path --max-apis 9`")
    return json.loads((out / "llm_path.json").read_text())["llms"]


def _hit1(results: dict, llm: str, row: str) -> float:
    return results[llm]["rows"][row]["hit@1"]


def test_an_always_wrong_llm_does_not_reorder_the_rankers_candidates(results) -> None:
    # Its proposals only gain the llm source; with them moved first (the earlier merge) the
    # shipped model lost a third of its hit@1 to such an LLM.
    alone = _hit1(results, "no LLM (retrieval only)", "ranker, llm_weight 0")
    wrong = "simulated, right 0% of the time"
    assert _hit1(results, wrong, llm_path.ORDER) == 0.0
    assert abs(_hit1(results, wrong, "ranker, llm_weight 0") - alone) <= 0.03
    assert _hit1(results, wrong, "ranker, llm_weight 0.5") < alone  # trusted, it costs


def test_a_right_llm_is_worth_its_weight(results) -> None:
    right = "simulated, right 100% of the time"
    assert _hit1(results, right, llm_path.ORDER) > 0.9  # all but targets outside the shortlist
    blended, unblended = (_hit1(results, right, f"ranker, llm_weight {w}") for w in ("0.5", "0"))
    assert blended > unblended + 0.1
    assert all(r["fallbacks"] == {} for r in results.values())


def test_bad_arguments_are_refused(capsys) -> None:
    for argv in (["--simulate", "1.5"], ["--simulate", ""], ["--llm"]):
        with pytest.raises(SystemExit) as exc:
            llm_path.main(argv)
        assert exc.value.code == 2
    assert "needs OPENSESAME_LLM_BASE_URL" in capsys.readouterr().err
