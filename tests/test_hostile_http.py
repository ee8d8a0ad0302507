"""Hostile clients against the live app on a real cluster, through real HTTP, with the production
default of refusing private spec hosts: SSRF in every spelling, oversized and bomb-shaped bodies,
schemathesis driven by the service's own ``/openapi.json``, and no secret or stack trace in any
answer or log.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from deployments.serving.schemas import PredictResponse
from tests.faults import HEALTH_MAX_MS, record
from tests.llm_server import FakeLLMServer, Reply
from tests.spec_server import SpecServer, banner_server, spec_server
from tests.specs import billing_spec
from tools.loadgen import HealthProbe

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.faults]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP = "hostile"
SECRET = "sk-hostile-never-shown-fedcba9876543210"


@pytest.fixture(scope="module")
def specs() -> Iterator[SpecServer]:
    """A spec host on loopback that no request may reach: it counts every hit."""
    with spec_server() as server:
        server.add("/spec.json", json.dumps(billing_spec()).encode())
        yield server


@pytest.fixture(scope="module", params=["serve run", "make run"])
def app(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The app under attack, deployed two ways: ``serve run`` on the session's cluster (Serve's
    Python proxy), and as ``make run`` deploys it (a Ray head of its own with HAProxy, admission
    control and the per-client share at the edge, workers and replicas at their priorities)."""
    # The LLM answers well, so responses could carry its key if anything leaked it.
    llm = FakeLLMServer(default=Reply.predictions([{"endpoint": "GET /invoices", "confidence": 0.5}])).start()
    settings = {
        "allow_private_spec_hosts": False,  # the production default
        "data_dir": str(tmp_path_factory.mktemp("hostile-data")),
        "spec_fetch_timeout_s": 1.0,
        "llm_base_url": llm.base_url,
        "llm_model": "m",
    }
    try:
        if request.param == "serve run":
            yield from _on_the_session_cluster(request.getfixturevalue("serve_cluster"), settings)
        else:
            yield from _as_make_run_deploys_it(settings)
    finally:
        llm.stop()


def _on_the_session_cluster(base: str, settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import ray

    from graph import build_app

    started = time.time()
    # The key as production passes it: in the environment, which build_app hands to the replicas
    # (constructor arguments): it must not surface in Ray's or Serve's logs either.
    os.environ["OPENSESAME_LLM_API_KEY"] = SECRET
    try:
        serve.run(build_app({"settings": settings}), name=APP, route_prefix="/hostile")
    finally:
        del os.environ["OPENSESAME_LLM_API_KEY"]
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    try:
        yield {"url": base + "/hostile", "base": base, "started": started, "logs": logs, "name": APP}
    finally:
        serve.delete(APP)


def _as_make_run_deploys_it(settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from tools.cluster import RayHead, make_run_env

    env = {
        **make_run_env(),
        "RAY_AUTH_MODE": "disabled",
        **{f"OPENSESAME_{k.upper()}": str(int(v) if isinstance(v, bool) else v) for k, v in settings.items()},
        "OPENSESAME_LLM_API_KEY": SECRET,  # in the head's environment, as the image passes it
    }
    started = time.time()
    with RayHead(env=env) as head:
        served = head.deploy(json.dumps(_body()).encode())
        name = yaml.safe_load(served.config.read_text())["applications"][0]["name"]
        yield {"url": served.url, "base": served.url, "started": started, "logs": head.logs, "name": name}


@pytest.fixture(scope="module")
def client(app) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app["url"], timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def health_throughout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every attack on the app is answered while ``/health`` is asked every 0.1 s: it must keep
    answering (issue 19's target is 100 ms; the bound asserted is what holds on the shared 2-CPU
    machine, and RELIABILITY.md has the numbers per attack)."""
    if "client" not in request.fixturenames:
        yield
        return
    app = request.getfixturevalue("app")
    with HealthProbe(app["url"] + "/health") as health:
        yield
    summary = health.summary()
    record(f"/health during {request.node.name}", **summary)
    assert health.failed == 0 and summary["max_ms"] < HEALTH_MAX_MS, summary


def _body(**kw: Any) -> dict[str, Any]:
    body = {"user_id": "u", "prompt": "pay the invoice", "events": [{"endpoint": "GET /v1/invoices/in_1"}]}
    body.update(kw)
    if "spec" not in body and "spec_url" not in body:
        body["spec"] = billing_spec()
    return body


def _is_clean_error(r: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    error = r.json()["error"]
    assert error["status"] == r.status_code and error["message"]
    assert "Traceback" not in r.text and SECRET not in r.text
    return error


# -- SSRF through spec_url -----------------------------------------------------------------------


def _ssrf_urls(port: int) -> dict[str, str]:
    p = port
    return {
        "loopback": f"http://127.0.0.1:{p}/spec.json",
        "loopback, other 127/8": f"http://127.1.2.3:{p}/spec.json",
        "loopback, short form": f"http://127.1:{p}/spec.json",
        "loopback, decimal": f"http://2130706433:{p}/spec.json",
        "loopback, octal": f"http://0177.0.0.1:{p}/spec.json",
        "loopback, hex": f"http://0x7f.0.0.1:{p}/spec.json",
        "loopback, hex dword": f"http://0x7f000001:{p}/spec.json",
        "loopback, trailing dot": f"http://127.0.0.1.:{p}/spec.json",
        "localhost": f"http://localhost:{p}/spec.json",
        "LOCALHOST": f"http://LOCALHOST:{p}/spec.json",
        "this host's name": f"http://{socket.gethostname()}:{p}/spec.json",
        "unspecified 0.0.0.0": f"http://0.0.0.0:{p}/spec.json",
        "IPv6 loopback": f"http://[::1]:{p}/spec.json",
        "IPv6 unspecified": f"http://[::]:{p}/spec.json",
        "IPv4-mapped IPv6": f"http://[::ffff:127.0.0.1]:{p}/spec.json",
        "IPv4-mapped IPv6, hex": f"http://[::ffff:7f00:1]:{p}/spec.json",
        "NAT64 of loopback": f"http://[64:ff9b::7f00:1]:{p}/spec.json",
        "6to4 of loopback": f"http://[2002:7f00:1::]:{p}/spec.json",
        "credentials in URL": f"http://user:pass@127.0.0.1:{p}/spec.json",
        "userinfo trick": f"http://example.com@127.0.0.1:{p}/spec.json",
        "fragment trick": f"http://127.0.0.1:{p}#@example.com/spec.json",
        "https to loopback": f"https://127.0.0.1:{p}/spec.json",
        "private 10/8": "http://10.0.0.1/spec.json",
        "private 172.16/12": "http://172.16.0.1/spec.json",
        "private 192.168/16": "http://192.168.1.1/spec.json",
        "carrier-grade NAT": "http://100.64.0.1/spec.json",
        "link-local": "http://169.254.1.1/spec.json",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "metadata, decimal": "http://2852039166/latest/meta-data/",
        "metadata, IPv6 (AWS)": "http://[fd00:ec2::254]/latest/meta-data/",
        "metadata, Alibaba": "http://100.100.100.200/latest/meta-data/",
        "ECS credentials": "http://169.254.170.2/v2/credentials",
        "IPv6 link-local": "http://[fe80::1]/spec.json",
        "IPv6 unique-local": "http://[fd12:3456::1]/spec.json",
        "multicast": "http://224.0.0.1/spec.json",
        "broadcast": "http://255.255.255.255/spec.json",
    }


def test_ssrf_every_spelling_is_refused_and_nothing_is_contacted(
    client: httpx.Client, specs: SpecServer
) -> None:
    refused, other = {}, {}
    for name, url in _ssrf_urls(specs.httpd.server_address[1]).items():
        t0 = time.monotonic()
        r = client.post("/predict", json=_body(spec_url=url))
        took = time.monotonic() - t0
        if r.status_code == 422 or r.status_code == 502 and "cannot resolve" in r.text:
            error = _is_clean_error(r, (422, 502))  # refused, or a name that resolves to nothing
            refused[name] = error["message"]
            # The rule, not what a name resolves to: a client must not map internal DNS.
            assert "resolves to" not in error["message"], (name, error["message"])
            if name in ("localhost", "LOCALHOST", "this host's name"):
                assert "127." not in error["message"] and "::1" not in error["message"], error
        else:
            other[name] = (r.status_code, r.text[:200])
        assert took < 3.0, (name, took)
    assert not other, other
    assert specs.hits == {}, f"the loopback spec host was reached: {specs.hits}"
    print("SSRF refusals:", json.dumps(refused, indent=1))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_x",
        "ftp://127.0.0.1/x",
        "dict://127.0.0.1:11211/stat",
        "//127.0.0.1/spec.json",
        "http:///spec.json",
        "http://[::1/spec.json",
        "http://" + "a" * 3000 + ".com/",
    ],
)
def test_unusable_spec_urls_are_refused(client: httpx.Client, url: str) -> None:
    _is_clean_error(client.post("/predict", json=_body(spec_url=url)), 422)


def test_unresolvable_host_is_a_502_not_a_hang(client: httpx.Client) -> None:
    t0 = time.monotonic()
    _is_clean_error(
        client.post("/predict", json=_body(spec_url="http://no-such-host.invalid/spec.json")), (502, 504)
    )
    assert time.monotonic() - t0 < 5


# -- bounded requests, bombs, nesting ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"events": [{"endpoint": "GET /v1/invoices"}] * 201}, "events"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"k": 21}, "k"),
        ({"k": 0}, "k"),
        ({"k": 10**30}, "k"),
        ({"k": "5; DROP TABLE"}, "k"),
        ({"user_id": "u" * 257}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"events": [{"endpoint": "GET /" + "a" * 3000}]}, "endpoint"),
        ({"events": [{"endpoint": "GET /a", "params": {str(i): i for i in range(101)}}]}, "params"),
        # Over Ray's 4 MiB gRPC message limit: was a 500 (RELIABILITY.md, "Bounds").
        ({"events": [{"endpoint": "GET /v1/invoices/in_1", "params": {"q": "x" * 5_000_000}}]}, "params"),
        ({"events": [{"endpoint": "\x00GET /a"}]}, "endpoint"),
        ({"events": "GET /a"}, "events"),
        ({"spec": [1, 2]}, "spec"),
        ({"spec": "openapi: 3.0.0"}, "spec"),
    ],
)
def test_out_of_bounds_fields_get_422_naming_the_field(
    client: httpx.Client, change: dict, field: str
) -> None:
    error = _is_clean_error(client.post("/predict", json=_body(**change)), 422)
    assert field in error["message"] + json.dumps(error.get("details")), error
    assert len(json.dumps(error)) < 5000  # the offending input is not echoed back


def test_oversized_bodies_get_413_without_being_read(client: httpx.Client) -> None:
    big = b'{"user_id": "u", "spec": {"x": "' + b"a" * (27 * 2**20) + b'"}}'
    t0 = time.monotonic()
    _is_clean_error(client.post("/predict", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"user_id": "u", "spec": {"x": "'
        for _ in range(28):
            yield b"a" * 2**20
        yield b'"}}'

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    _is_clean_error(r, 413)
    assert time.monotonic() - t0 < 20


def test_a_declared_body_over_the_cap_is_refused_before_it_is_sent(client: httpx.Client, app) -> None:
    """Content-Length over the cap and only the body's first bytes sent: the 413 comes from the
    header alone (a cap counted only while reading would wait for the other 27 MB)."""
    url = httpx.URL(app["url"])
    head = (f"POST {url.path}/predict HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {27 * 2**20}\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(head + b'{"user_id": "u", "spec": {"x": "')
        answer = sock.recv(65536)  # nothing more is sent: without the check, no answer comes
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"user_id": "u", "spec": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b'{"user_id": "u", "spec": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}",
        b'{"user_id": "u", "spec": {"openapi": "3.0.0"}, "events": [{"endpoint": "GET /a", "params": '
        + b'{"a":' * 900
        + b"1"
        + b"}" * 900
        + b"}]}",
        b'{"user_id": "u", "spec": {"openapi": "3.0.0", "paths": {"/a": {"get": {}}}}, "events": '
        b'[{"endpoint": "GET /a", "params": ' + b"[" * 900 + b"]" * 900 + b"}]}",
        b'{"user_id": "u", "k": 1e999999, "spec": {}}',
        b'{"user_id": "u", "k": ' + b"9" * 100_000 + b', "spec": {}}',
        b'{"user_id": "\xff\xfe", "spec": {}}',
        b'{"user_id": "u", "user_id": "v", "spec": {}}',
        b"",
        b"null",
        b'"' + b"a" * 1000 + b'"',
    ],
    ids=[
        "deep-array",
        "deep-spec-100k",
        "deep-spec-900",
        "deep-params-900",
        "deep-list-params-900",
        "huge-float",
        "huge-int",
        "bad-utf8",
        "duplicate-keys",
        "empty",
        "null",
        "string",
    ],
)
def test_json_bombs_and_deep_nesting_never_500(client: httpx.Client, raw: bytes) -> None:
    t0 = time.monotonic()
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    if r.status_code != 200:
        _is_clean_error(r, r.status_code)
    assert time.monotonic() - t0 < 10


def test_hostile_spec_paths_do_not_stall_the_service(client: httpx.Client) -> None:
    # A spec whose mixed path segment would backtrack for ever in a regex, a call that exercises it,
    # and a 1,500-segment path: answered quickly, and the service keeps answering others.
    seg = "-".join(f"{{p{i}}}" for i in range(8)) + "!"
    spec = {
        "openapi": "3.0.0",
        "paths": {"/x/" + seg: {"get": {}}, "/{a}" * 300: {"get": {}}, "/invoices": {"get": {}}},
    }
    events = [{"endpoint": "GET /x/" + "-" * 2000 + "z"}] * 20 + [{"endpoint": "GET " + "/a" * 300}]
    t0 = time.monotonic()
    r = client.post("/predict", json=_body(spec=spec, events=events))
    assert r.status_code == 200, r.text[:300]
    assert time.monotonic() - t0 < 5
    assert client.post("/predict", json=_body()).status_code == 200


def test_inline_spec_with_5000_operations(client: httpx.Client) -> None:
    paths = {
        f"/r{i}/{{id}}": {"get": {"summary": f"get r{i}"}, "post": {"summary": f"act on r{i}"}}
        for i in range(2500)
    }
    t0 = time.monotonic()
    r = client.post(
        "/predict",
        json=_body(spec={"openapi": "3.0.0", "paths": paths}, events=[{"endpoint": "GET /r7/abc"}]),
    )
    assert r.status_code == 200, r.text[:300]
    assert time.monotonic() - t0 < 15


def test_inline_spec_that_expands_past_the_caps_gets_413(client: httpx.Client) -> None:
    # 500 path items sharing one of 5 operations × 200 parameters: 24 KB, 501,000 parameters.
    shared: dict[str, Any] = {m: {"summary": m} for m in ("get", "put", "post", "delete", "patch")}
    shared["parameters"] = [{"name": f"p{i}", "in": "query"} for i in range(200)]
    paths = {"/shared": shared, **{f"/p{i}": {"$ref": "#/paths/~1shared"} for i in range(500)}}
    t0 = time.monotonic()
    r = client.post("/predict", json=_body(spec={"openapi": "3.0.0", "paths": paths}))
    error = _is_clean_error(r, 413)
    assert "100000 parameters" in error["message"] and "cap" in error["message"], error
    assert time.monotonic() - t0 < 10


# -- schemathesis from the service's own schema --------------------------------------------------


def _check(response: httpx.Response | Any, operation: str) -> None:
    status = response.status_code
    text = response.text
    assert status != 500, (operation, text[:500])
    assert "Traceback" not in text and SECRET not in text, operation
    if status == 503:
        assert response.headers.get("retry-after"), (operation, text[:300])
    if status >= 400 and status != 404 or status == 404 and "error" in text:
        assert "error" in response.json(), (operation, text[:300])
    if status == 200 and operation == "POST /predict":
        PredictResponse.model_validate(response.json())


def test_schemathesis_from_openapi_json_finds_no_500(client: httpx.Client, app) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(app["url"] + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /predict", "GET /health", "POST /feedback"} <= names, names
    calls = {"n": 0}
    for op in operations:
        name = f"{op.method.upper()} {op.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=60 if op.method.upper() == "POST" else 10,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                calls["n"] += 1
                _check(case.call(base_url=app["url"], timeout=30), name)  # noqa: B023 - run below

            try:
                fuzz()
            except Unsatisfiable:  # e.g. no negative case for an operation without parameters
                assert mode == GenerationMode.NEGATIVE, name
    print(f"schemathesis: {calls['n']} requests over {sorted(names)}")
    assert calls["n"] > 50


# -- nothing secret or internal in the logs ------------------------------------------------------


def test_no_secret_or_traceback_in_the_logs(client: httpx.Client, app) -> None:
    leaked, tracebacks = [], []
    for path in app["logs"].rglob("*"):
        if not path.is_file() or path.stat().st_mtime < app["started"]:
            continue
        text = path.read_text(errors="replace")
        if SECRET in text:
            leaked.append(str(path))
        # This app's replicas: hostile input is a 4xx, never an unhandled exception.
        if f"_{app['name']}_" in path.name and "Traceback" in text:
            tracebacks.append((str(path), text[text.index("Traceback") :][:1500]))
    assert not leaked, leaked
    assert not tracebacks, tracebacks


def test_a_non_http_port_banner_is_not_echoed() -> None:
    """A spec_url pointing at a service that is not HTTP: its banner bytes must not come back
    (httpx's error quotes them); the answer names the kind of failure only."""
    banner = b"SSH-2.0-OpenSSH_9.9 secret-internal-banner\r\n"
    with banner_server(banner, accept_timeout_s=10) as port:
        # loopback is refused by this app (the production default): the fetcher the Ingress
        # uses is asked directly, with private hosts allowed
        from core.errors import SpecFetchFailed
        from core.settings import load_settings
        from deployments.serving.spec_fetch import SpecFetcher

        async def fetch() -> str:
            fetcher = SpecFetcher(load_settings(allow_private_spec_hosts=True, spec_fetch_timeout_s=3))
            try:
                await fetcher.fetch(f"http://127.0.0.1:{port}/spec.json")
            except SpecFetchFailed as exc:
                return exc.message
            finally:
                await fetcher.aclose()
            return "fetched"

        import asyncio

        message = asyncio.run(fetch())
    assert "did not answer valid HTTP" in message, message
    assert "secret-internal-banner" not in message and "SSH" not in message, message


def test_delete_user_removes_their_predictions_and_outcomes(client: httpx.Client) -> None:
    """DELETE /users/{id}: the user's stored predictions and outcomes are gone (404), another
    user's are untouched."""
    mine = [client.post("/predict", json=_body(user_id="erase-me")).json()["prediction_id"] for _ in range(2)]
    theirs = client.post("/predict", json=_body(user_id="keep-me")).json()["prediction_id"]
    fb = client.post("/feedback", json={"prediction_id": mine[0], "actual_endpoint": "POST /v1/invoices"})
    assert fb.status_code == 200, fb.text
    assert client.get(f"/feedback/{mine[1]}").status_code == 200
    r = client.delete("/users/erase-me")
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": "erase-me", "predictions": 2, "outcomes": 1}
    for pid in mine:
        _is_clean_error(client.get(f"/feedback/{pid}"), 404)
    assert client.get(f"/feedback/{theirs}").status_code == 200
    assert client.delete("/users/erase-me").json()["predictions"] == 0  # idempotent
    _is_clean_error(client.delete("/users/" + "u" * 257), 422)
