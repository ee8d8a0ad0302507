"""benchmarks.serving_ab's variants and benchmarks.cluster's config merge (no cluster needed)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from benchmarks.cluster import ROOT, merged, write_config
from benchmarks.serving_ab import PINNED, Variant


def test_a_variant_is_env_config_and_checkout() -> None:
    v = Variant.parse("loop:RAY_SERVE_X=0,Ingress.user_config.batching.max_in_flight=1")
    assert (v.name, v.root, v.env) == ("loop", ROOT, {"RAY_SERVE_X": "0"})
    assert v.config == {"Ingress": {"user_config": {"batching": {"max_in_flight": 1}}}}
    assert Variant.parse("base") == Variant(name="base")


@pytest.mark.parametrize("text, match", [
    ("x:NOVALUE", "not KEY=VALUE"),
    ("x:Nope.user_config=1", "not <deployment>"),
    ("x@/nonexistent-checkout", "no .venv"),
])
def test_a_bad_variant_is_refused(text: str, match: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        Variant.parse(text)


def test_overrides_merge_key_by_key(tmp_path) -> None:
    v = Variant.parse("x:Ingress.user_config.batching.max_in_flight=1")
    path = write_config(tmp_path / "c.yaml", port=1234,
                        deployments={"Ingress": merged(PINNED, v.config["Ingress"])})
    def ingress(doc):
        return next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")

    base = ingress(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    ingress = ingress(yaml.safe_load(path.read_text()))
    assert ingress["user_config"]["batching"] == {**base["user_config"]["batching"], "max_in_flight": 1}
    assert ingress["autoscaling_config"]["max_replicas"] == 1
    assert ingress["autoscaling_config"]["policy"]["policy_function"].endswith("LatencyPolicy")
