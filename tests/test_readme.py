"""The README, run as a newcomer runs it: every command and request/answer pair in it, against a
real Serve app on a real Ray cluster (the session's), over real HTTP, the CLI and the drivers in
subprocesses; the ports, caps and defaults it quotes, against the code.

A README command this module does not know how to run fails the test (``_classify``): a new
example is either run here or given a reason not to be. What is rewritten before running, and
only that: ``127.0.0.1:8000`` → this app's HTTP address, ``127.0.0.1:6390`` → this cluster's GCS
address, ``opensesame`` → ``python -m tools.cli``, ``<prediction_id>`` and the example's made-up
id → an id this app gave, ``my-api.yaml`` → the example billing spec written as YAML.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.cluster import wait_http
from core.scorer import RankerModel
from core.settings import PROJECT_ROOT, Settings
from deployments.serving import schemas
from deployments.serving.api_docs import swagger_ui_version
from tools.cli import DEFAULT_URL

README = (PROJECT_ROOT / "README.md").read_text()
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
RAY_PORT = int(re.search(r"^RAY_PORT \?= (\d+)$", MAKEFILE, re.M).group(1))  # type: ignore[union-attr]
HTTP_PORT = int(re.search(r"^PORT \?= (\d+)$", MAKEFILE, re.M).group(1))  # type: ignore[union-attr]
# every port make run opens (metrics, dashboard, HAProxy's own): the README may name them all
MAKE_RUN_PORTS = {int(p) for p in re.findall(r"^\w*PORT \?= (\d+)$", MAKEFILE, re.M)}
MAKE_RUN_RAY = f"127.0.0.1:{RAY_PORT}"
MAKE_RUN_HTTP = f"127.0.0.1:{HTTP_PORT}"
EXAMPLE_ID = re.compile(r"\b[0-9a-f]{32}\b")


# -- reading the README --------------------------------------------------------------------------


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def _commands(block: str) -> list[tuple[str, str]]:
    """A shell block as (command, the comment lines after it) pairs: a command runs on over lines
    ending in a backslash or inside an open quote."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in block.splitlines():
        if not pending and line.startswith("#"):
            if out:
                out[-1] = (out[-1][0], out[-1][1] + line[1:].strip() + "\n")
            continue
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if line.endswith("\\"):
            continue
        if pending.strip():
            out.append((pending.strip(), ""))
        pending = ""
    assert not pending.strip(), f"unterminated README command: {pending[:200]}"
    return out


def _argv(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value assignments, then the words (comments dropped)."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def _comment(command: str) -> str:
    """The comment at the end of a one-line command."""
    words = shlex.shlex(command, posix=True)
    words.whitespace_split = True
    words.commenters = ""
    tail = command[len(" ".join(shlex.split(command, comments=True))):]
    return tail.split("#", 1)[1].strip() if "#" in tail else ""


def _classify(env: dict[str, str], argv: list[str]) -> str:
    """How a README command is checked: run | help | make | skip:<why>."""
    head = argv[0] if argv else ""
    if head == ".":
        return "skip:activates the venv, which the tests run in"
    if head == "make":
        return "make"
    if head in ("docker",):
        return "skip:no Docker engine on the test machine"
    if head in ("export", "ray") or argv[:2] == ["python", "-c"]:
        return "skip:a token-auth cluster of its own (tests/test_handle_job.py starts one)"
    if head == "serve":
        return "skip:Ray's own CLI against make run's dashboard"
    if head == "kubectl":
        return "skip:a Kubernetes cluster"
    if head in ("grep", "sqlite3"):
        return "skip:reads what a running make run wrote (its logs, its database)"
    if argv[:3] == ["python", "-m", "tools.backup"]:
        return "skip:copies the data dir (tests/test_hostile_feedback.py backs up a live store)"
    if any("HEAD:" in w for w in argv):
        return "help" if head == "opensesame" else "skip:a production head (tests/test_handle_job.py)"
    if head == "curl":
        if any(w.endswith(("/predict", "/feedback")) for w in argv):
            return "curl"  # test_example_answer_and_feedback_as_shown
        return "skip:make run's metrics port"
    if head == "opensesame":
        command = argv[1]
        if command in ("predict", "feedback", "models") or (command == "bench" and "--in-process" in argv):
            return "run"
        return "help"  # train, retrain, rollback, evaluate, bench over HTTP: minutes, or a live rollout
    if head == "python" and argv[1:2] == ["examples/handle_client.py"]:
        return "run"
    return f"unknown:{head}"


def _all_commands() -> list[tuple[str, str]]:
    return [c for block in _blocks("sh") for c in _commands(block)]


# -- quoted from the code ------------------------------------------------------------------------


def test_every_readme_command_is_known() -> None:
    unknown = [c for c, _ in _all_commands() if _classify(*_argv(c)).startswith("unknown")]
    assert not unknown, f"README commands this test cannot run; run them here or say why not: {unknown}"


def test_ports_and_addresses_are_make_runs() -> None:
    assert f"It serves HTTP on `{MAKE_RUN_HTTP}` and its Ray head listens on `{MAKE_RUN_RAY}`" in README
    assert DEFAULT_URL == f"http://{MAKE_RUN_HTTP}"
    examples = "".join(p.read_text() for p in sorted((PROJECT_ROOT / "examples").glob("*.py")))
    addresses = re.findall(r"--address[ =](\S+)", README + examples)
    addresses += re.findall(r'ray\.init\(address="([^"]+)"', README)
    assert addresses and all(a in (MAKE_RUN_RAY, "HEAD:6379", "auto", "<head>") for a in addresses), addresses
    # the Ray head's default port, for the token-auth head started without --port
    assert "listens on Ray's default port, 6379" in README
    assert "localhost:" not in README.replace("localhost:8000", "")  # one spelling: 127.0.0.1
    urls = set(re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", README))
    assert urls <= {str(p) for p in MAKE_RUN_PORTS} | {"8001"}, urls  # 8001: your own http.server


def test_contract_limits_are_the_schemas() -> None:
    fields = schemas.PredictRequest.model_fields
    meta = {f: {type(m).__name__: m for m in fields[f].metadata} for f in fields}

    def bound(field: str, kind: str, attr: str) -> int:
        return int(getattr(meta[field][kind], attr))

    table = _section("The contract")
    assert (f"| `user_id` | required | {bound('user_id', 'MinLen', 'min_length')}–"
            f"{bound('user_id', 'MaxLen', 'max_length')} characters |") in table
    assert f"up to {schemas.MAX_EVENTS} `{{" in table
    assert f"up to {schemas.MAX_PROMPT_CHARS:,} characters" in table
    assert (f"| `k` | optional | {bound('k', 'Ge', 'ge')}–{bound('k', 'Le', 'le')}, default "
            f"{fields['k'].default} |") in table


def test_caps_and_settings_defaults_are_the_codes() -> None:
    defaults = Settings()
    body_cap = defaults.spec_max_bytes + 1024 * 1024
    assert f'"request body over {body_cap} bytes"' in README  # the server's own words, checked live below
    assert f"`OPENSESAME_SPEC_MAX_BYTES` ({defaults.spec_max_bytes} bytes, 25 MiB)" in README
    assert defaults.spec_max_bytes == 25 * 1024 * 1024
    assert f"`OPENSESAME_REQUEST_TIMEOUT_S` ({defaults.request_timeout_s:g} s)" in README
    assert f"`OPENSESAME_CLIENT_MAX_CONCURRENT` ({defaults.client_max_concurrent})" in README
    rows = re.findall(r"^\| (`OPENSESAME_[^|]*) \| ([^|]*) \|", _section("Settings"), re.M)
    assert len(rows) >= 15
    for names, default in rows:
        for name in re.findall(r"`OPENSESAME_([A-Z0-9_]+)`", names):
            field = name.lower()
            assert field in Settings.model_fields, f"README names OPENSESAME_{name}, not a setting"
            _check_default(field, getattr(defaults, field), default.strip(), names)


def _check_default(field: str, value: Any, shown: str, names: str) -> None:
    if " / " in shown:  # `A` / `B` | a / b
        index = [n.lower() for n in re.findall(r"`OPENSESAME_([A-Z0-9_]+)`", names)].index(field)
        shown = shown.split(" / ")[index]
    if value is None:
        assert shown == "unset" or shown.startswith(("`$DATA_DIR/", "the shipped")), (field, shown)
        if shown.startswith("the shipped"):
            assert "ranker/models/ranker.txt" in shown
    elif isinstance(value, bool):
        assert shown == str(int(value)), (field, shown)
    elif isinstance(value, int | float):
        assert float(shown.split()[0]) == value, (field, shown)
    elif isinstance(value, Path):
        if field == "data_dir":
            assert value == PROJECT_ROOT / "var" and shown == "`var/` in the checkout", shown
        else:
            assert value == PROJECT_ROOT.parent / "shared" / "data" / "jentic", value
            assert shown == "`shared/data/jentic` beside the checkout", shown
    elif value == "":
        assert shown == "empty", (field, shown)
    else:
        raise AssertionError(f"no rule to compare OPENSESAME_{field.upper()}'s default {value!r}")


def test_named_modules_targets_and_script_exist() -> None:
    for module in set(re.findall(r"python -m ([\w.]+)", README)):
        assert importlib.util.find_spec(module) is not None, f"README names python -m {module}"
    for _, argv in (_argv(c) for c, _ in _all_commands()):
        if argv[:1] == ["make"]:
            assert re.search(rf"^{argv[1]}:", MAKEFILE, re.M), f"make {argv[1]}"
    for target in re.findall(r"`make ([\w-]+)`", README):
        assert re.search(rf"^{target}:", MAKEFILE, re.M), f"make {target}"
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["opensesame"] == "tools.cli:main"
    # `OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1 make run` works: the Makefile only sets a default
    assert re.search(r"^export OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS \?=", MAKEFILE, re.M)


# -- against the running service -----------------------------------------------------------------

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def app(serve_cluster, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The app as `make run` deploys it, on fresh data (no outcomes: answers as on a fresh deploy)."""
    from graph import build_app

    data_dir = tmp_path_factory.mktemp("readme")
    serve.run(build_app({"settings": {"data_dir": str(data_dir)}}), name="opensesame", route_prefix="/")
    wait_http(serve_cluster + "/health", timeout_s=60)
    try:
        yield {"url": serve_cluster, "address": ray.get_runtime_context().gcs_address,
               "host_port": serve_cluster.removeprefix("http://"),
               "tmp": tmp_path_factory.mktemp("readme-run")}
    finally:
        serve.delete("opensesame")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENSESAME_", "RAY_ADDRESS", "RAY_AUTH", "RAY_SERVE_THROUGHPUT"))}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "disabled",
            "OPENSESAME_DATA_DIR": str(tmp / "data"), **extra}


def _bash(script: str, app: dict[str, Any]) -> str:
    run = subprocess.run(["bash", "-c", script.replace(MAKE_RUN_HTTP, app["host_port"])], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _example_answer() -> tuple[dict[str, Any], list[str]]:
    text = _section("Example")
    [shown] = _blocks("json", text)
    return json.loads(shown), re.findall(r'"score": ([0-9.]+)', shown)


@pytest.mark.serve
def test_example_answer_and_feedback_as_shown(app) -> None:
    [(curl, _)] = _commands(_blocks("sh", _section("Example"))[0])
    live = json.loads(_bash(curl, app))
    shown, scores = _example_answer()
    as_readme = json.dumps({"predictions": [
        {**p, "score": round(p["score"], 4)} for p in live["predictions"]],
        "metadata": {k: v for k, v in live["metadata"].items() if k != "timings_ms"}}, indent=1)
    for key in ("model_version", "generator", "cold_start", "fallback_reason", "unknown_events"):
        assert live["metadata"][key] == shown["metadata"][key], as_readme
    assert len(live["predictions"]) == len(shown["predictions"]), as_readme
    for p, s, score in zip(live["predictions"], shown["predictions"], scores, strict=True):
        decimals = len(score.split(".")[1])
        assert {**p, "score": round(p["score"], decimals)} == s, f"the README's answer drifted:\n{as_readme}"

    [(feedback, expected)] = _commands(_blocks("sh", _section("Feedback"))[0])
    # copied as written, the made-up id answers 404, as the README says
    refused = json.loads(_bash(feedback, app))
    assert refused["error"]["status"] == 404
    # with the id of the answer above: what the comment shows
    ours = json.loads(_bash(EXAMPLE_ID.sub(live["prediction_id"], feedback), app))
    promised = json.loads(expected.replace("\n", " "))
    assert ours["prediction_id"] == live["prediction_id"]
    assert {k: v for k, v in ours.items() if k != "prediction_id"} == \
        {k: v for k, v in promised.items() if k != "prediction_id"}, ours


@pytest.mark.serve
def test_errors_and_schema_as_the_readme_says(app) -> None:
    url = app["url"]
    # 413 by the declared length, before any body: the server's words are the README's
    host, port = app["host_port"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/predict")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", "99999999")
        conn.endheaders()
        response = conn.getresponse()
        status, message = response.status, json.loads(response.read())["error"]["message"]
    finally:
        conn.close()
    assert status == 413, message
    assert f'"{message}"' in _section("The contract"), message
    # an inline spec is a JSON object: YAML text is refused, as the quick start says
    body = json.loads((PROJECT_ROOT / "examples" / "request.json").read_text())
    body["spec"] = yaml.safe_dump(body["spec"])
    assert httpx.post(url + "/predict", json=body, timeout=30).status_code == 422
    # a loopback spec host: 422, naming the setting the quick start names
    del body["spec"]
    body["spec_url"] = "http://127.0.0.1:8001/my-api.yaml"
    refused = httpx.post(url + "/predict", json=body, timeout=30)
    assert refused.status_code == 422 and "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1" in refused.text
    assert "`OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1 make run`" in _section("Quick start")
    # each route's error statuses, as the README lists them and the schema says
    listed = re.search(r"Per route, as `/openapi.json` lists them: (.*?)\n\n", README, re.S).group(1)  # type: ignore[union-attr]
    said = {route: sorted(codes.replace("none", "").split()) for route, codes in
            re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE) /[^`]*)` ((?:\d{3} ?)+|none)", listed)}
    schema = httpx.get(url + "/openapi.json", timeout=30).json()
    served = {f"{method.upper()} {path}": sorted(c for c in op["responses"] if c != "200")
              for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert said == served
    for path, ops in schema["paths"].items():
        for op in ops.values():
            for code, response in op["responses"].items():
                if code != "200" and path != "/readyz":  # the envelope every error has (readyz: reasons)
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (path, code, ref)


@pytest.mark.serve
def test_docs_work_offline(app) -> None:
    page = httpx.get(app["url"] + "/docs", timeout=30)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"https?://", page.text), re.findall(r"https?://[^\s\"']+", page.text)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(assets) >= 3 and all(a.startswith("/docs/static/") for a in assets), assets
    for asset in assets:
        got = httpx.get(app["url"] + asset, timeout=30)
        assert got.status_code == 200 and len(got.content) > 500, asset
    assert "url: '/openapi.json'" in page.text or 'url: "/openapi.json"' in page.text
    # Swagger UI 4 shows "Unable to render this definition" for the OpenAPI 3.1 FastAPI writes
    schema_version = httpx.get(app["url"] + "/openapi.json", timeout=30).json()["openapi"]
    assert not schema_version.startswith("3.1") or swagger_ui_version() >= (5,), swagger_ui_version()
    assert httpx.get(app["url"] + "/docs/static/..%2F..%2F__init__.py", timeout=30).status_code == 404
    assert httpx.get(app["url"] + "/redoc", timeout=30).status_code == 404  # ReDoc needs a CDN: not offered


def _cli_argv(words: list[str], app: dict[str, Any], ids: dict[str, str]) -> list[str]:
    argv = [sys.executable, "-m", "tools.cli"]
    for word in words[1:]:
        word = word.replace(MAKE_RUN_RAY, app["address"]).replace(MAKE_RUN_HTTP, app["host_port"])
        word = ids.get(word, word)
        argv.append(word)
    needs_url = words[1] in ("predict", "feedback") and not {"--in-process", "--address"} & set(words)
    if needs_url and "--url" not in words:
        argv += ["--url", app["url"]]
    return argv


@pytest.mark.serve
def test_commands_as_written(app) -> None:
    tmp: Path = app["tmp"]
    own_spec = tmp / "my-api.yaml"
    billing = json.loads((PROJECT_ROOT / "examples" / "billing_spec.json").read_text())
    own_spec.write_text(yaml.safe_dump(billing))
    # an id of this app's, for `feedback <prediction_id>` (another user: u-42's answers stay cold)
    request = json.loads((PROJECT_ROOT / "examples" / "request.json").read_text()) | {"user_id": "readme-cli"}
    answer = httpx.post(app["url"] + "/predict", json=request, timeout=60).json()
    ids = {"<prediction_id>": answer["prediction_id"], "my-api.yaml": str(own_spec)}
    jobs: list[tuple[str, list[str], dict[str, str], str]] = []
    for command, _ in _all_commands():
        env, words = _argv(command)
        how = _classify(env, words)
        if how == "run" and words[0] == "opensesame":
            jobs.append((command, _cli_argv(words, app, ids), env, _comment(command)))
        elif how == "help":
            run = subprocess.run([sys.executable, "-m", "tools.cli", words[1], "--help"], cwd=PROJECT_ROOT,
                                 env=_env(tmp), capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, (command, run.stderr[-2000:])
            for flag in (w.split("=")[0] for w in words[2:] if w.startswith("-")):
                assert flag in run.stdout, f"{command}: {flag} is not an option of opensesame {words[1]}"
    assert len(jobs) >= 8, [j[0] for j in jobs]

    def run_job(job: tuple[str, list[str], dict[str, str], str]) -> tuple[str, Any, str]:
        command, argv, env, comment = job
        return command, subprocess.run(argv, cwd=PROJECT_ROOT, env=_env(tmp, **env), capture_output=True,
                                       text=True, timeout=240), comment

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(run_job, jobs))
    for command, run, comment in done:
        assert run.returncode == 0 and "Traceback" not in run.stderr, (command, run.stderr[-3000:])
        if comment.startswith("current:"):  # what `opensesame models` prints
            assert run.stdout.splitlines()[0] == comment, (command, run.stdout)
            assert comment == f"current: the shipped model {RankerModel.load().version}"
        if "--json" in command and "predict" in command:
            assert json.loads(run.stdout)["predictions"]


@pytest.mark.serve
def test_handle_examples_as_written(app) -> None:
    tmp: Path = app["tmp"]
    section = _section("From another Ray job")
    [(client, _)] = [c for block in _blocks("sh", section) for c in _commands(block)
                     if "examples/handle_client.py" in c[0] and "HEAD:" not in c[0]]
    env, words = _argv(client)
    argv = [sys.executable] + [w.replace(MAKE_RUN_RAY, app["address"]) for w in words[1:]]
    run = subprocess.run(argv, cwd=PROJECT_ROOT, env=_env(tmp, **env), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    by_client = json.loads(run.stdout.strip().splitlines()[-1])

    [snippet] = _blocks("python", section)
    run_as = re.match(r"# (.*?) python driver\.py", snippet)
    assert run_as, "the snippet says how to run it"
    driver = tmp / "driver.py"
    driver.write_text(snippet.replace(f'address="{MAKE_RUN_RAY}"', f'address="{app["address"]}"'))
    run = subprocess.run([sys.executable, str(driver)], cwd=PROJECT_ROOT,
                         env=_env(tmp, **_argv(run_as.group(1) + " x")[0]), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    printed = run.stdout.strip().splitlines()
    top = by_client["predictions"][0]["endpoint"]
    assert printed == [top, f"{top} 1"], printed  # the same top as the example client; accepted: rank 1
