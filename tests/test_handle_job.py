"""The app called from ANOTHER Ray job: ``examples/handle_client.py`` runs as a separate driver
process, joins the running cluster with ``ray.init(address=...)``, takes
``serve.get_app_handle("opensesame")`` and must get the same answer as ``POST /predict``.

Twice: on the session cluster (token auth disabled, as in development), and on a cluster of its
own started the way the README says for production — ``RAY_AUTH_MODE=token`` and a token file for
``ray start``, ``serve run`` and the client alike — where a client without the token is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.cluster import wait_http
from core.settings import PROJECT_ROOT
from tests.conftest import free_port
from tests.specs import billing_spec
from tools.rollout import apply_config

pytestmark = pytest.mark.serve
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

CLIENT = PROJECT_ROOT / "examples" / "handle_client.py"
REQUEST = {
    "user_id": "u-handle",
    "events": [{"endpoint": "GET /v1/invoices"},
               {"endpoint": "PUT /v1/invoices/in_123/status", "params": {"status": "DRAFT"}}],
    "prompt": "get this invoice paid",
    "spec": billing_spec(),
    "k": 3,
}


def _answer(response: dict) -> tuple:
    """What must agree: the predictions in full and the model that made them."""
    return (
        [(p["endpoint"], p["params"], p["score"], p["why"], p["destructive"], p["missing_params"])
         for p in response["predictions"]],
        response["metadata"]["model_version"],
        response["metadata"]["generator"],
    )


def _run_client(address: str, request_path: Path, env: dict[str, str], timeout: float = 180):
    return subprocess.run(
        [sys.executable, str(CLIENT), "--address", address, str(request_path)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_SERVE_THROUGHPUT"))}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return {**env, **extra}


# -- the session cluster, auth disabled ----------------------------------------------------------


@pytest.fixture(scope="module")
def app(serve_cluster, tmp_path_factory) -> Iterator[str]:
    from graph import build_app

    data_dir = tmp_path_factory.mktemp("handle-job")
    serve.run(build_app({"settings": {"data_dir": str(data_dir)}}), name="opensesame", route_prefix="/")
    try:
        yield serve_cluster
    finally:
        serve.delete("opensesame")


def test_another_job_gets_the_same_answer_as_http(app, tmp_path) -> None:
    over_http = httpx.post(app + "/predict", json=REQUEST, timeout=30)
    assert over_http.status_code == 200, over_http.text
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(REQUEST))
    address = ray.get_runtime_context().gcs_address
    run = _run_client(address, request_path, _clean_env(RAY_AUTH_MODE="disabled"))
    assert run.returncode == 0, run.stderr[-3000:]
    via_handle = json.loads(run.stdout.strip().splitlines()[-1])
    assert _answer(via_handle) == _answer(over_http.json())
    assert via_handle["prediction_id"] != over_http.json()["prediction_id"]
    # the CLI's --address mode is the same kind of separate job
    cli = subprocess.run(
        [sys.executable, "-m", "tools.cli", "predict", "--address", address, "--request",
         str(request_path), "--json"],
        cwd=PROJECT_ROOT, env=_clean_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
        timeout=180,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert _answer(json.loads(cli.stdout.strip().splitlines()[-1])) == _answer(over_http.json())


# -- a cluster with token auth -------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory) -> Iterator[dict]:
    """``ray start --head --block`` with token auth (its own temp dir and ports, so other Ray
    clusters on this machine are untouched); stopped by SIGTERM to that process only."""
    root = tmp_path_factory.mktemp("token-cluster")
    token_file = root / "ray_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    temp_dir = Path(tempfile.mkdtemp(prefix="osk-", dir="/tmp"))  # short: Unix socket paths
    port, http_port = free_port(), free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--port", str(port), "--num-cpus", "2", "--object-store-memory", "200000000",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp_dir),
         "--ray-client-server-port", str(free_port()),
         "--dashboard-agent-listen-port", str(free_port()),
         "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()),
         "--metrics-export-port", str(free_port()),
         "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())],
        env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=open(root / "head.log", "w"),
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
        config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": http_port}
        config["applications"][0]["args"] = {"settings": {"data_dir": str(root / "var")}}
        config_path = root / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + 120
        while True:  # the head takes a while on a busy 2-CPU machine
            try:
                apply_config(config_path, address=address, env=env, timeout_s=120)
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(2)
        url = f"http://127.0.0.1:{http_port}"
        wait_http(url + "/predict", timeout_s=240, data=json.dumps(REQUEST).encode(), head=head)
        yield {"address": address, "url": url, "token_file": token_file, "root": root}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_another_job_with_token_auth(token_cluster, tmp_path) -> None:
    over_http = httpx.post(token_cluster["url"] + "/predict", json=REQUEST, timeout=30)
    assert over_http.status_code == 200, over_http.text
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(REQUEST))
    with_token = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_cluster["token_file"]))
    run = _run_client(token_cluster["address"], request_path, with_token)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _answer(json.loads(run.stdout.strip().splitlines()[-1])) == _answer(over_http.json())

    # the same client with a wrong token is refused (HOME elsewhere: no ~/.ray/auth_token)
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    refused = _run_client(token_cluster["address"], request_path,
                          {**with_token, "RAY_AUTH_TOKEN_PATH": str(wrong), "HOME": str(tmp_path)},
                          timeout=120)
    assert refused.returncode != 0
    assert "token" in refused.stderr.lower() or "auth" in refused.stderr.lower(), refused.stderr[-2000:]
