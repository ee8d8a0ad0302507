"""serve_config.yaml fits the node: every deployment at its maximum replica count, beside Ray."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.serving.autoscaling import LatencyPolicy
from deployments.serving.batching import BatchConfig, IngressConfig
from deployments.serving.resources import DEPLOYMENT_OPTIONS, MB, NODE, NodeBudget

ROOT = Path(__file__).resolve().parent.parent
GRAPH = ("Ingress", "CandidateGenerator", "FeatureExtractor", "Ranker")


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    [app] = doc["applications"]
    return {d["name"]: d for d in app["deployments"]}


def max_replicas(d: dict[str, Any]) -> int:
    return d["autoscaling_config"]["max_replicas"] if "autoscaling_config" in d else d["num_replicas"]


def test_every_deployment_is_pinned(deployments) -> None:
    assert set(deployments) == set(GRAPH)
    for name, d in deployments.items():
        actor = d["ray_actor_options"]
        assert 0 < actor["num_cpus"] < 1, name  # fractions: a whole CPU each would fit two
        assert actor["memory"] > 0, name
        assert d["max_ongoing_requests"] >= 1 and d["max_queued_requests"] >= 1, name
        assert d["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}, name


def test_max_replicas_fit_two_cpus(deployments) -> None:
    cpus = sum(max_replicas(d) * d["ray_actor_options"]["num_cpus"] for d in deployments.values())
    assert cpus <= NODE.num_cpus


def test_one_node_runs_one_ingress(deployments) -> None:
    # A second Ingress on two CPUs serves no more, and while it starts it imports the service at
    # the Ingress's own priority, beside the one answering /health (RELIABILITY.md).
    assert max_replicas(deployments["Ingress"]) == 1
    assert all(max_replicas(d) == 2 for name, d in deployments.items() if name != "Ingress")


def test_max_replicas_fit_four_gb_beside_ray(deployments) -> None:
    reserved = sum(max_replicas(d) * d["ray_actor_options"]["memory"] for d in deployments.values())
    assert reserved <= NODE.replica_memory_mb * MB
    ray_own = NODE.ray_base_mb + NODE.object_store_mb + NODE.controller_mb + NODE.proxy_mb + NODE.dashboard_mb
    assert ray_own + reserved / MB <= NODE.total_mb <= 4000
    # The measured size of a replica (~150 MB, more with specs cached) is what each reserves.
    assert all(d["ray_actor_options"]["memory"] >= 200 * MB for d in deployments.values())


def test_head_announces_what_replicas_may_take() -> None:
    args = NODE.ray_start_args()
    assert args[args.index("--num-cpus") + 1] == "2"
    assert int(args[args.index("--memory") + 1]) == NODE.replica_memory_mb * MB
    assert int(args[args.index("--object-store-memory") + 1]) == NODE.object_store_mb * MB
    assert "--include-dashboard=false" in args
    assert "--include-dashboard=true" in NODE.ray_start_args(dashboard=True)
    with pytest.raises(ValueError, match="nothing left"):
        NodeBudget(total_mb=1000).ray_start_args()


def test_make_run_and_the_image_start_the_head_with_these_caps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "-m tools.run start" in run  # which starts its head with tools.cluster.RayHead:
    assert "*NODE.ray_start_args(" in (ROOT / "tools" / "cluster.py").read_text()
    assert re.search(r"ray start --head .*-m deployments\.serving\.resources", dockerfile)
    from tools.cluster import make_run_env  # what tools.run gives the head

    env = " ".join(f"{k}={v}" for k, v in make_run_env().items())
    for text in (env, dockerfile):
        assert "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in text
        assert "RAY_SERVE_ENABLE_HA_PROXY=1" in text
        assert "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0" in text
        assert "RAY_worker_niceness=0" in text  # deployments/serving/admission.py, priorities


def test_code_defaults_are_the_config(deployments) -> None:
    for name in GRAPH:
        d = deployments[name]
        expected = DEPLOYMENT_OPTIONS[name]
        keys = ("max_ongoing_requests", "max_queued_requests", "backpressure_config", "ray_actor_options")
        for key in keys:
            assert d[key] == expected[key], (name, key)


def test_batching_user_config_is_valid_and_fits_max_ongoing(deployments) -> None:
    IngressConfig.from_user_config(deployments["Ingress"]["user_config"])
    for name in ("FeatureExtractor", "Ranker"):
        config = BatchConfig.model_validate(deployments[name]["user_config"])
        assert deployments[name]["max_ongoing_requests"] >= config.max_batch_size, name


def test_latency_policy_is_in_every_autoscaling_config(deployments) -> None:
    for name, d in deployments.items():
        auto = d["autoscaling_config"]
        assert auto["policy"]["policy_function"] == "deployments.serving.autoscaling:LatencyPolicy", name
        LatencyPolicy(**auto["policy"]["policy_kwargs"])  # the kwargs are valid
        assert auto["look_back_period_s"] > auto["metrics_interval_s"], name
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"], name
        assert set(auto) <= {
            "min_replicas", "max_replicas", "initial_replicas", "metrics_interval_s", "look_back_period_s",
            "upscale_delay_s", "downscale_delay_s", "upscaling_factor", "downscaling_factor", "policy",
        }, f"{name}: unknown autoscaling key (Serve would ignore a typo silently)"


def test_serve_accepts_the_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc)
    [app] = schema.applications
    assert app.import_path == "graph:build_app"


def test_the_kuberay_manifest_deploys_the_same_config(deployments) -> None:
    manifest = yaml.safe_load((ROOT / "configs" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    for d in app["deployments"]:
        ours = deployments[d["name"]]
        # Only max_replicas differs: a cluster of several nodes has room for more. No replica
        # is pinned: outcomes reach the data node through the store actor.
        theirs_auto = {**d["autoscaling_config"], "max_replicas": None}
        assert theirs_auto == {**ours["autoscaling_config"], "max_replicas": None}
        assert {**d, "autoscaling_config": None} == {**ours, "autoscaling_config": None}
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    args = NODE.ray_start_args()
    assert head["num-cpus"] == args[args.index("--num-cpus") + 1]
    assert head["memory"] == args[args.index("--memory") + 1]
    assert head["object-store-memory"] == args[args.index("--object-store-memory") + 1]


def test_the_image_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    installed = [p for p in packages if p not in ("tests", "benchmarks")]
    missing = [p for p in installed if f"COPY {p} ./{p}" not in dockerfile]
    assert not missing, f"the Dockerfile does not copy {missing} before `pip install .`"
