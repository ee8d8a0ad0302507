"""Two Ray nodes on this machine, with the feedback store of several nodes (``feedback_store =
"actor"``): the head holds the data (custom resource ``opensesame_data``, as in
configs/rayservice.yaml), so the one store actor, the only writer of the SQLite files, runs there;
a second node joined with ``ray start --address`` has resources and a temp dir of its own. One
Ingress replica runs on each node. Feedback on a prediction served by either node's replica,
posted through either, is found; only the actor holds the files, both nodes mirror the
population memory; a retrain reading the store sees every outcome; predictions made while the
actor restarts are not lost; with the actor gone, feedback answers 503 saying why (predictions
still 200)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from deployments.serving.feedback import FeedbackReader
from deployments.serving.store_actor import ACTOR_NAME, DATA_RESOURCE, NAMESPACE
from ranker.retrain import feedback_groups
from tools.cluster import (
    RayHead,
    ServeApp,
    free_port,
    listening_sockets,
    make_run_env,
    process_title,
    replica_of,
    write_config,
)
from tools.loadgen import process_tree

ROOT = Path(__file__).resolve().parent.parent
REQUEST = json.loads((ROOT / "examples" / "request.json").read_text())
pytestmark = [pytest.mark.serve, pytest.mark.slow]


def _config(path: Path, port: int) -> Path:
    one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    elsewhere = {"ray_actor_options": {"resources": {"second_node": 0.01}}}
    # Each node announces one `ingress_slot`: two replicas, one on each node.
    ingress = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2},
               "ray_actor_options": {"resources": {"ingress_slot": 1}}}
    write_config(path, port=port, deployments={
        "Ingress": ingress,
        **{name: {**one, **elsewhere} for name in ("CandidateGenerator", "FeatureExtractor", "Ranker")},
    })
    return path


def _open_files(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    out = []
    try:
        for fd in fds.iterdir():
            try:
                out.append(os.readlink(fd))
            except OSError:
                continue
    except OSError:
        pass
    return out


def _replica_url(pids: Callable[[], set[int]], timeout_s: float = 120) -> str:
    """The HTTP address of the one Ingress replica among ``pids()`` (the port of its own that
    answers /livez), once it is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replicas = [pid for pid in pids() if replica_of(process_title(pid)) == "Ingress"]
        assert len(replicas) <= 1, replicas
        for _pid, address, port in listening_sockets(replicas):
            host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
            try:
                if httpx.get(f"http://{host}:{port}/livez", timeout=2).status_code == 200:
                    return f"http://{host}:{port}"
            except httpx.HTTPError:
                continue
        time.sleep(1)
    raise AssertionError(f"no Ingress replica answering among {sorted(pids())}")


def test_feedback_reaches_one_store_whichever_node_took_it(tmp_path: Path) -> None:
    data = tmp_path / "data-node"
    env = {**make_run_env(), "PYTHONPATH": str(ROOT), "OPENSESAME_DATA_DIR": str(data),
           "OPENSESAME_FEEDBACK_STORE": "actor", "OPENSESAME_FEEDBACK_WAIT_S": "2"}
    head = RayHead(env=env, extra_args=("--resources", json.dumps({DATA_RESOURCE: 1, "ingress_slot": 1})))
    second_temp = tempfile.mkdtemp(prefix="os5-", dir="/tmp")  # short: Ray's sockets live under it
    try:
        head.start()
        # The second node: resources and a temp dir of its own; the head's marker, so head.stop()
        # ends it too.
        second = subprocess.Popen(
            [str(head.bin / "ray"), "start", "--address", head.address, "--block", "--num-cpus", "1",
             "--memory", str(1400 * 1024 * 1024), "--object-store-memory", str(100 * 1024 * 1024),
             "--resources", json.dumps({"second_node": 1, "ingress_slot": 1}),
             "--temp-dir", second_temp, "--dashboard-agent-listen-port", str(free_port()),
             "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
             "--disable-usage-stats"],
            env=head.env, stdout=head.log, stderr=subprocess.STDOUT, start_new_session=True)
        app = ServeApp(head, _config(tmp_path / "serve.yaml", free_port()))
        app.start(json.dumps(REQUEST).encode(), timeout_s=300)
        assert second.poll() is None

        def on_head() -> set[int]:
            return process_tree([head.proc.pid]) - process_tree([second.pid])

        def on_second() -> set[int]:
            return process_tree([second.pid])

        # Each Ingress replica serves HTTP on a port of its own behind HAProxy: requests sent
        # there are answered by that node's replica.
        url = {"head": _replica_url(on_head), "second": _replica_url(on_second)}
        ids: dict[tuple[str, str], list[str]] = {}
        with httpx.Client(timeout=60) as client:
            for made, told in (("head", "second"), ("second", "head"), ("head", "head"),
                               ("second", "second")):
                for i in range(3):
                    body = {**REQUEST, "user_id": f"{made}-{told}-{i}"}
                    answer = client.post(url[made] + "/predict", json=body)
                    assert answer.status_code == 200, answer.text
                    prediction_id = answer.json()["prediction_id"]
                    ids.setdefault((made, told), []).append(prediction_id)
                    outcome = client.post(url[told] + "/feedback",
                                          json={"prediction_id": prediction_id, "accepted": True})
                    assert outcome.status_code == 200, (made, told, outcome.text)  # never 404
            everything = [i for group in ids.values() for i in group]
            for node in ("head", "second"):  # found through either node
                for prediction_id in everything:
                    stored = client.get(f"{url[node]}/feedback/{prediction_id}")
                    assert stored.status_code == 200, (node, stored.text)
                    assert stored.json()["outcome"]["source"] == "accepted"
            # and through the front door (HAProxy)
            assert client.get(f"{app.url}/feedback/{everything[0]}").status_code == 200

            # One writer: the actor on the data node is the only process holding the file.
            holders = {pid for pid in process_tree([head.proc.pid, second.pid])
                       if any(f.endswith("/feedback.sqlite") for f in _open_files(pid))}
            head_only = on_head()
            assert len(holders) == 1 and holders <= head_only, holders
            # The population memory too: the actor learns it into its file, each node mirrors it.
            learners = {pid for pid in process_tree([head.proc.pid, second.pid])
                        if any(f.endswith("/population.sqlite") for f in _open_files(pid))}
            assert learners == holders, learners
            for node in ("head", "second"):
                deadline = time.monotonic() + 30
                while True:
                    health = client.get(url[node] + "/health").json()
                    population = health["deployments"]["ingress"]["population"]
                    if population.get("seq", 0) > 0 or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                assert population["seq"] > 0 and population["last_error"] is None, (node, population)
            placed: dict[str, set[str]] = {}
            for node, pids in (("second", process_tree([second.pid])), ("head", head_only)):
                for pid in pids:
                    if name := replica_of(process_title(pid)):
                        placed.setdefault(name, set()).add(node)
            assert placed == {"Ingress": {"head", "second"}, "CandidateGenerator": {"second"},
                              "FeatureExtractor": {"second"}, "Ranker": {"second"}}, placed

            # A retrain reads the store on the data node: every outcome is there to learn from.
            from core.features import FeatureExtractor
            from core.priors.transitions import load_transitions

            reader = FeedbackReader(data / "feedback.sqlite")
            stored_all = list(reader.predictions(with_outcome=True))
            extractor = FeatureExtractor(transitions=load_transitions())
            fb = feedback_groups(reader, stored_all, extractor=extractor, progress=False)
            assert {s.prediction_id for s in stored_all} == set(everything)
            assert set(fb.ids) == set(everything), fb.skipped
            reader.close()

            # The actor's process killed: Ray restarts it on the data node. Predictions made
            # meanwhile are kept by each replica and sent again: feedback on them, refused
            # (503, with the reason) while the actor is down, is recorded once it is back.
            os.kill(holders.pop(), signal.SIGKILL)
            during = [client.post(url[node] + "/predict", json={**REQUEST, "user_id": f"during-{node}"})
                      for node in ("head", "second")]
            assert [a.status_code for a in during] == [200, 200], [a.text for a in during]
            for node, answer in zip(("second", "head"), during, strict=True):  # through the other
                body = {"prediction_id": answer.json()["prediction_id"], "accepted": True}
                refusals = []
                for _ in range(60):
                    told = client.post(url[node] + "/feedback", json=body)
                    if told.status_code != 503:
                        break
                    refusals.append(told.json()["error"]["message"])
                    time.sleep(1)
                assert told.status_code == 200, (told.text, refusals)
            restarted = {pid for pid in process_tree([head.proc.pid, second.pid])
                         if any(f.endswith("/feedback.sqlite") for f in _open_files(pid))}
            assert len(restarted) == 1 and restarted <= on_head(), restarted

            # The actor gone for good: feedback answers 503 with the reason, at once; predictions
            # are still served.
            subprocess.run(
                [sys.executable, "-c",
                 f"import ray; ray.init(address={head.address!r}, namespace={NAMESPACE!r}, "
                 f"log_to_driver=False); ray.kill(ray.get_actor({ACTOR_NAME!r}), no_restart=True)"],
                env=head.env, check=True, timeout=120, capture_output=True)
            time.sleep(1)
            for node in ("head", "second"):
                answer = client.post(url[node] + "/predict", json={**REQUEST, "user_id": "after"})
                assert answer.status_code == 200, answer.text
                t0 = time.monotonic()
                told = client.post(url[node] + "/feedback",
                                   json={"prediction_id": answer.json()["prediction_id"], "accepted": True})
                assert told.status_code == 503, told.text
                assert "feedback store actor" in told.json()["error"]["message"], told.text
                assert time.monotonic() - t0 < 10  # the deadline, not a hang
    finally:
        head.stop()
        shutil.rmtree(second_temp, ignore_errors=True)
