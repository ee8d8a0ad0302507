"""The command line, run the way users run it: ``python -m tools.cli`` in a subprocess for the
entry point, ``main([...])`` in-process for the rest (same code, no interpreter start-up each);
against the real service over HTTP, in-process, and on a tiny slice of the data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cluster import wait_http
from core.settings import PROJECT_ROOT
from tests.specs import billing_spec
from tests.test_train import _tiny_jentic
from tools.cli import main, parse_event

REQUEST = PROJECT_ROOT / "examples" / "request.json"
COMMANDS = ("predict", "feedback", "evaluate", "bench", "train", "retrain", "rollback", "models")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["train", "retrain", "rollback", "models", "population"])
def test_a_forwarded_command_names_itself_in_its_help(capsys, command) -> None:
    """`opensesame models --help` says `usage: opensesame models`, not the module it runs."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: opensesame {command} ")


def test_entry_point_help() -> None:
    run = subprocess.run([sys.executable, "-m", "tools.cli", "--help"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert all(c in run.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_parse_event() -> None:
    assert parse_event('PUT /v1/x/1 {"status": "DRAFT"}') == {
        "endpoint": "PUT /v1/x/1", "params": {"status": "DRAFT"}}
    assert parse_event(" GET /v1/x ") == {"endpoint": "GET /v1/x", "params": {}}


def test_predict_in_process_from_flags(capsys, tmp_path) -> None:
    spec = tmp_path / "billing.json"
    spec.write_text(json.dumps(billing_spec()))
    code, out, _ = _run(capsys, "predict", "--in-process", "--json", "--user-id", "u1", "--spec", str(spec),
                        "--event", "GET /v1/invoices",
                        "--event", 'PUT /v1/invoices/in_1/status {"status": "DRAFT"}',
                        "--prompt", "get this invoice paid", "-k", "3")
    assert code == 0
    answer = json.loads(out)
    assert 0 < len(answer["predictions"]) <= 3 and answer["prediction_id"]
    code, out, _ = _run(capsys, "predict", "--in-process", "--request", str(REQUEST))
    assert code == 0 and "prediction_id" in out and "1. " in out


def test_predict_refuses_a_bad_request(capsys) -> None:
    code, _, err = _run(capsys, "predict", "--in-process", "--user-id", "u1", "--spec-url", "ftp://x/y")
    assert code == 2 and "invalid request" in err


def test_bench_in_process(capsys) -> None:
    code, out, err = _run(capsys, "bench", "--in-process", "--requests", "5", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["requests"] == 5 and summary["errors"] == 0 and summary["latency_ms"]["p50"] > 0
    assert "requests [" in err  # the progress bar


def test_evaluate_and_models_on_a_tiny_slice(capsys, tmp_path, jentic_dir) -> None:
    tiny = tmp_path / "jentic"
    _tiny_jentic(jentic_dir, tiny)
    code, out, err = _run(capsys, "evaluate", "--jentic-dir", str(tiny), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert any(k.startswith("real: ") for k in report["metrics"])
    assert all(0 <= m["hit@1"] <= 1 for m in report["metrics"].values())
    assert "features [" in err
    code, out, _ = _run(capsys, "models", "--models-dir", str(tmp_path / "models"), "--json")
    assert code == 0 and json.loads(out)["current"] is None
    code, _, err = _run(capsys, "rollback", "--models-dir", str(tmp_path / "models"))
    assert code == 2 and "nothing to roll back" in err


# -- against the running service -----------------------------------------------------------------

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def service(serve_cluster, tmp_path_factory) -> Iterator[str]:
    from graph import build_app

    data_dir = tmp_path_factory.mktemp("cli-serve")
    serve.run(build_app({"settings": {"data_dir": str(data_dir)}}), name="opensesame", route_prefix="/")
    # serve.run returns when the replicas are ready; the proxy may take a moment to route to them.
    wait_http(serve_cluster + "/predict", timeout_s=60, data=REQUEST.read_bytes())
    try:
        yield serve_cluster
    finally:
        serve.delete("opensesame")


@pytest.mark.serve
def test_predict_feedback_and_bench_over_http(capsys, service) -> None:
    code, out, err = _run(capsys, "predict", "--url", service, "--request", str(REQUEST), "--json")
    assert code == 0, (out, err)
    answer = json.loads(out)
    code, out, _ = _run(capsys, "feedback", answer["prediction_id"], "--accepted", "--url", service, "--json")
    assert code == 0 and json.loads(out)["rank"] == 1
    code, out, _ = _run(capsys, "feedback", answer["prediction_id"], "--accepted", "--url", service)
    assert code == 0 and out.startswith("already recorded")
    code, out, err = _run(capsys, "feedback", "feedfeed", "--accepted", "--url", service)
    assert code == 1 and "404" in err
    code, out, err = _run(capsys, "bench", "--url", service, "--requests", "20", "--clients", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["requests"] == 20 and summary["errors"] == 0
    code, out, err = _run(capsys, "predict", "--url", service + "/nothing-here", "--request", str(REQUEST))
    assert code == 1 and "error 404" in err


def test_predict_against_nothing_reports_unreachable(capsys) -> None:
    from tests.conftest import free_port

    code, out, _ = _run(capsys, "predict", "--url", f"http://127.0.0.1:{free_port()}", "--request",
                        str(REQUEST), "--json", "--timeout", "2")
    assert code == 1 and json.loads(out)["status"] == "unreachable"
    assert Path(REQUEST).is_file()


# -- errors: one line, a documented exit status, no traceback -------------------------------------


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENSESAME_")}
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=PROJECT_ROOT,
                          env={**base, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _one_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-2000:]
    return lines[0]


def test_a_refused_spec_host_in_process_is_one_line_naming_the_setting() -> None:
    run = _cli("predict", "--in-process", "--user-id", "u1", "--spec-url", "http://127.0.0.1:9/openapi.json")
    assert run.returncode == 1
    line = _one_line(run)
    assert line.startswith("error 422: spec host '127.0.0.1'")
    assert "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1" in line


@pytest.mark.parametrize("variable, expected", [
    ("OPENSESAME_DATADIR=x", "unknown setting OPENSESAME_DATADIR; did you mean OPENSESAME_DATA_DIR?"),
    ("OPENSESAME_SPEC_MAX_BYTES=abc", "invalid setting OPENSESAME_SPEC_MAX_BYTES='abc': Input should be"),
])
@pytest.mark.parametrize("command", [["predict", "--in-process", "--request", str(REQUEST)], ["models"]])
def test_a_bad_setting_is_one_line_and_exit_2(variable, expected, command) -> None:
    name, value = variable.split("=")
    run = _cli(*command, env={name: value})
    assert run.returncode == 2
    assert expected in _one_line(run)


def test_models_names_the_shipped_version(capsys, tmp_path) -> None:
    from core.scorer import RankerModel

    code, out, _ = _run(capsys, "models", "--models-dir", str(tmp_path / "models"))
    assert code == 0 and out.splitlines()[0] == f"current: the shipped model {RankerModel.load().version}"


def test_no_ray_at_the_address_is_one_line_at_once() -> None:
    from tests.conftest import free_port

    started = time.monotonic()
    run = _cli("predict", "--address", f"127.0.0.1:{free_port()}", "--request", str(REQUEST),
               env={"RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 1 and time.monotonic() - started < 60
    line = _one_line(run)
    assert line.startswith("error unreachable: no Ray cluster at 127.0.0.1:") and "127.0.0.1:6390" in line


def test_a_port_that_is_not_ray_gives_up_within_the_timeout() -> None:
    """Something listens but never speaks Ray's protocol: Ray would retry for minutes."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        run = _cli("predict", "--address", f"127.0.0.1:{server.getsockname()[1]}", "--request", str(REQUEST),
                   "--timeout", "4", env={"RAY_AUTH_MODE": "disabled"})
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert run.returncode == 1
    assert _one_line(run).startswith("error unreachable: Ray at 127.0.0.1:") and took < 40


@pytest.mark.parametrize("argv, expected", [
    (["feedback", "bad id!", "--accepted"], "invalid feedback: prediction_id: String should match pattern"),
    (["predict", "--in-process", "--user-id", "u1", "--spec-url", "https://x/y", "-k", "99"],
     "invalid request: k: Input should be less than or equal to 20"),
    (["predict", "--in-process", "--request", "/nonexistent/request.json"], "invalid request: [Errno 2]"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(expected), err


@pytest.mark.parametrize("command", [["rollback", "--apply"], ["retrain", "--apply", "--no-promote"]])
def test_a_rollout_to_no_cluster_is_one_line_at_once(command) -> None:
    """`serve run --address` to a port where nothing listens would retry for the rollout's 120 s."""
    from tests.conftest import free_port

    started = time.monotonic()
    run = _cli(*command, "--address", f"127.0.0.1:{free_port()}", env={"RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 1 and time.monotonic() - started < 30
    assert _one_line(run).startswith("error unreachable: no Ray cluster at 127.0.0.1:")


@pytest.mark.parametrize("command", [["rollback", "--apply"], ["retrain", "--apply"]])
def test_apply_without_an_address_is_bad_arguments_exit_2(command) -> None:
    """README, Command line: 2 is bad arguments; 1 is kept for a service that answered an error."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("OPENSESAME_")}
    run = subprocess.run([sys.executable, "-m", "tools.cli", *command], cwd=PROJECT_ROOT,
                         env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert _one_line(run) == "--apply needs --address (or RAY_ADDRESS): the running Ray cluster"


def test_a_bad_spec_file_is_one_line_and_exit_2(capsys, tmp_path) -> None:
    """`--spec FILE` that is missing or not YAML is bad input (exit 2, one line), for predict as for
    population clear, never a traceback (README, Command line)."""
    bad, missing = tmp_path / "my-api.yaml", tmp_path / "missing.json"
    bad.write_text("openapi: [3.0\n")
    store = ["--path", str(tmp_path / "population.sqlite")]
    for argv, expected in [
        (["predict", "--in-process", "--user-id", "u1", "--spec", str(bad)],
         f"invalid request: --spec {bad} is not valid YAML: expected ',' or ']'"),
        (["population", *store, "clear", "--spec", str(missing)],
         f"opensesame population: --spec {missing}: [Errno 2] No such file or directory"),
        (["population", *store, "clear", "--spec", str(bad)],
         f"opensesame population: --spec {bad}: spec is not valid YAML"),
    ]:
        code, out, err = _run(capsys, *argv)
        assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(expected), err


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--no-workflows", "--feedback", "{tmp}/feedback.sqlite"],
     "opensesame: no feedback store at {tmp}/feedback.sqlite"),
    (["evaluate", "--no-workflows", "--feedback", "{tmp}/feedback.sqlite", "--model", "{tmp}/none.txt"],
     "opensesame: ranker model {tmp}/none.txt not found"),
    (["evaluate", "--jentic-dir", "{tmp}"], "opensesame: no workflows under {tmp}/workflows"),
    (["bench", "--in-process", "--request", "{tmp}/request.json"], "opensesame: [Errno 2] No such file"),
    (["predict", "--in-process", "--request", "examples/request.json", "--model", "{tmp}/none"],
     "opensesame: ranker model {tmp}/none not found"),
])
def test_a_missing_file_is_one_line_and_exit_2(capsys, tmp_path, argv, expected) -> None:
    """README's `opensesame evaluate --no-workflows --feedback var/feedback.sqlite` before any
    feedback was recorded, and the like: a path that is not there, said in one line."""
    code, out, err = _run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2 and err.strip().splitlines() == [err.strip()], err
    assert err.startswith(expected.format(tmp=tmp_path)), err
