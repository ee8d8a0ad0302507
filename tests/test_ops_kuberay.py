"""configs/rayservice.yaml and configs/k8s-ops.yaml say what issue 21 asks of them, in fields
current KubeRay reads, and a rollout's patch changes only the Ranker's model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tools.kuberay import rayservice_patch

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((ROOT / "configs" / "rayservice.yaml").read_text())
OPS = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "configs" / "k8s-ops.yaml").read_text()) if d}


def _head() -> dict:
    return MANIFEST["spec"]["rayClusterConfig"]["headGroupSpec"]


def test_no_field_kuberay_ignores() -> None:
    spec = MANIFEST["spec"]
    assert "serviceUnhealthySecondThreshold" not in spec and "deploymentUnhealthySecondThreshold" not in spec
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}


def test_data_on_a_volume_written_by_the_store_actor_beside_it() -> None:
    head = _head()
    [container] = head["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == env["OPENSESAME_DATA_DIR"]["value"]
    [volume] = head["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == OPS["PersistentVolumeClaim"]["metadata"]["name"]
    # Only the head announces the resource the store actor asks for: outcomes land on the volume.
    assert "opensesame_data" in head["rayStartParams"]["resources"]
    workers = MANIFEST["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all("resources" not in w["rayStartParams"] for w in workers)
    # Every pod's Ingress sends its outcomes to that actor, so the Ingress may run anywhere.
    for group in (head, *workers):
        [c] = group["template"]["spec"]["containers"]
        assert {"name": "OPENSESAME_FEEDBACK_STORE", "value": "actor"} in c["env"]
    serve = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    ingress = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert "resources" not in ingress["ray_actor_options"]


def test_metrics_port_scraped_and_llm_key_from_a_secret() -> None:
    groups = [_head(), *MANIFEST["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    monitor = OPS["PodMonitor"]["spec"]
    [endpoint] = monitor["podMetricsEndpoints"]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        [container] = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[endpoint["port"]] == 8080
        key = next(e for e in container["env"] if e["name"] == "OPENSESAME_LLM_API_KEY")
        secret = {"name": "opensesame-llm", "key": "api-key", "optional": True}
        assert key["valueFrom"]["secretKeyRef"] == secret
    assert _head()["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_a_rollout_patch_changes_only_the_rankers_model() -> None:
    cmd = [sys.executable, "-m", "tools.kuberay", "patch", "--model-path", "/app/var/models/v7"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    patch = json.loads(out)
    assert patch == rayservice_patch(MANIFEST, model_path=Path("/app/var/models/v7"))
    before = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    after = yaml.safe_load(patch["spec"]["serveConfigV2"])
    ranker = next(d for d in after["applications"][0]["deployments"] if d["name"] == "Ranker")
    assert ranker["user_config"].pop("model_path") == "/app/var/models/v7"
    assert after == before

