"""Two Ray nodes on this machine, placed as configs/rayservice.yaml places them: the Ingress (the
feedback writer) on the node that holds the data (custom resource ``opensesame_data``), the
other deployments on a second node joined with ``ray start --address`` and a data dir of its own.
Every outcome lands in the data node's feedback store, while the other stages really run on the
second node. (Settings, the data dir among them, reach every replica from the app's builder, so
on several machines the same path is each node's own disk: only the Ingress's is written.)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tools.cluster import RayHead, ServeApp, free_port, make_run_env, write_config
from tools.loadgen import process_tree

ROOT = Path(__file__).resolve().parent.parent
REQUEST = json.loads((ROOT / "examples" / "request.json").read_text())
pytestmark = [pytest.mark.serve, pytest.mark.slow]


def _config(path: Path, port: int) -> Path:
    one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    on = {"ray_actor_options": {"resources": {"opensesame_data": 0.01}}}  # as in rayservice.yaml
    elsewhere = {"ray_actor_options": {"resources": {"second_node": 0.01}}}
    return write_config(path, port=port, deployments={
        "Ingress": {**one, **on},
        **{name: {**one, **elsewhere} for name in ("CandidateGenerator", "FeatureExtractor", "Ranker")},
    })


def _replica_name(pid: int) -> str | None:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return None
    prefix = "ray::ServeReplica:opensesame:"
    return title[len(prefix):].split(".")[0] if title.startswith(prefix) else None


def test_outcomes_reach_the_data_node_whichever_node_served(tmp_path: Path) -> None:
    data = tmp_path / "data-node"
    head = RayHead(env={**make_run_env(), "PYTHONPATH": str(ROOT), "OPENSESAME_DATA_DIR": str(data)},
                   extra_args=("--resources", '{"opensesame_data": 1}'))
    try:
        head.start()
        # The second node: its own resources; the head's marker, so head.stop() ends it.
        second = subprocess.Popen(
            [str(head.bin / "ray"), "start", "--address", head.address, "--block", "--num-cpus", "1",
             "--memory", str(1200 * 1024 * 1024), "--object-store-memory", str(100 * 1024 * 1024),
             "--resources", '{"second_node": 1}', "--dashboard-agent-listen-port", str(free_port()),
             "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
             "--disable-usage-stats"],
            env=head.env, stdout=head.log, stderr=subprocess.STDOUT, start_new_session=True)
        app = ServeApp(head, _config(tmp_path / "serve.yaml", free_port()))
        app.start(json.dumps(REQUEST).encode(), timeout_s=300)
        assert second.poll() is None
        with httpx.Client(base_url=app.url, timeout=60) as client:
            ids = [client.post("/predict", json={**REQUEST, "user_id": f"u{i}"}).json()["prediction_id"]
                   for i in range(3)]
            answers = [client.post("/feedback", json={"prediction_id": i, "accepted": True}) for i in ids]
            assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
            assert all(client.get(f"/feedback/{i}").json()["outcome"] for i in ids)
        with sqlite3.connect(data / "feedback.sqlite") as db:
            stored = {r[0] for r in db.execute("SELECT prediction_id FROM outcomes")}
        assert set(ids) <= stored
        # Where each replica ran: under the second node's raylet, or under the head's.
        placed = {_replica_name(pid): "second" for pid in process_tree([second.pid]) if _replica_name(pid)}
        placed |= {_replica_name(pid): "head" for pid in process_tree([head.proc.pid]) if _replica_name(pid)}
        assert placed == {"Ingress": "head", "CandidateGenerator": "second", "FeatureExtractor": "second",
                          "Ranker": "second"}, placed
    finally:
        head.stop()
