"""``make run`` and ``make stop``: the service on this machine, and everything it started gone again.

    python -m tools.run start [--host 127.0.0.1] [--port 8000] [--ray-port 6390] [--metrics-port 8080] ...
    python -m tools.run stop [--ray-port 6390]

``start`` checks first that nothing is in the way (an earlier run still up, a port taken, e.g. by
an HAProxy a killed cluster left behind) and says so in one line instead of hanging; prints
where everything listens; starts a capped Ray head (:class:`tools.cluster.RayHead`: its own temp
dir, HAProxy files and ports, the dashboard so ``serve status``/``serve deploy`` work, the
Prometheus export port) and ``serve run`` of ``serve_config.yaml`` on the host and port asked for.
Ctrl-C or SIGTERM stops all of it. Every process it starts carries a marker of the head's temp dir
(``/tmp/osp-<ray port>``) in its environment: ``stop``, from any shell, ends exactly those,
whatever state they are in, and nothing else (``start`` asked first, so that it stops its own in
order; then SIGTERM, and SIGKILL after a grace period, for what is left).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.settings import SettingsError
from tools.cluster import (
    ROOT,
    RayHead,
    listening_table,
    make_run_env,
    marked_pids,
    signal_pids,
    socket_inodes,
    write_config,
)

__all__ = ["Ports", "preflight", "port_owner", "stop", "main"]

STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Ports:
    host: str = "127.0.0.1"
    http: int = 8000
    ray: int = 6390
    metrics: int = 8080
    dashboard: int = 8265
    haproxy_metrics: int = 9101
    haproxy_stats: int = 8404

    @property
    def temp_dir(self) -> str:
        # Per Ray port: two runs on different ports stay apart, `make stop RAY_PORT=…` finds its own.
        return f"/tmp/osp-{self.ray}"  # short: HAProxy refuses socket paths over 97 bytes under it

    def banner(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 - a display
        opened = " (HTTP open on all interfaces)" if self.host in ("0.0.0.0", "") else ""  # noqa: S104
        return (f"Ray {shown}:{self.ray}, HTTP {shown}:{self.http}{opened}, "
                f"metrics http://127.0.0.1:{self.metrics}/metrics, "
                f"dashboard http://127.0.0.1:{self.dashboard} — `make stop` stops it all")

    def checked(self) -> list[tuple[str, str, int]]:
        """(what, the address its server binds, port): Ray's servers, its metrics export and
        HAProxy's metrics and stats bind the host (``RayHead(bind_host=…)``), the dashboard
        loopback."""
        return [
            ("HTTP", self.host, self.http),
            ("Ray", self.host, self.ray),
            ("metrics", self.host, self.metrics),
            ("dashboard", "127.0.0.1", self.dashboard),
            ("HAProxy metrics", self.host, self.haproxy_metrics),
            ("HAProxy stats", self.host, self.haproxy_stats),
        ]


def port_owner(port: int) -> str | None:
    """``name (pid N)`` of the process listening on TCP ``port``, if this user can see it."""
    inodes = {inode for inode, _, p in listening_table() if p == port}
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if socket_inodes(int(pid)) & inodes:
            with contextlib.suppress(OSError):
                return f"{Path(f'/proc/{pid}/comm').read_text().strip()} (pid {pid})"
    return "another user's process"


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def preflight(ports: Ports) -> str | None:
    """Why ``start`` cannot start now, in one line; None if nothing is in the way."""
    left = marked_pids(ports.temp_dir)
    if left:
        return (f"an earlier `make run` on Ray port {ports.ray} is still running "
                f"(pids {' '.join(map(str, sorted(left)[:8]))}): `make stop RAY_PORT={ports.ray}` first")
    for what, host, port in ports.checked():
        if not _bindable(host, port):
            owner = port_owner(port) or "a process"
            hint = (" — a Serve HAProxy left by a Ray cluster stopped with `ray stop`; end it by its pid"
                    if owner.startswith("haproxy") else "")
            return (f"port {port} ({what}) is taken by {owner}{hint}; "
                    f"or choose another (make run PORT=… RAY_PORT=… METRICS_PORT=…)")
    return None


def _supervisor(pids: Sequence[int]) -> int | None:
    """Of ``pids``, the ``start`` process (``make run`` itself), if it is still there."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"tools.run\0start\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def _wait(still: Callable[[], object], seconds: float, poll_s: float = 0.25) -> None:
    """Until ``still()`` is false, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and still():
        time.sleep(poll_s)


def stop(ports: Ports, grace_s: float = STOP_GRACE_S) -> int:
    """End every process ``start`` started for this Ray port; the number ended. ``make run`` is
    asked first, so that it stops its own in order and ends quietly; what is left after the grace
    period is ended here."""
    pids = marked_pids(ports.temp_dir)

    def left() -> list[int]:
        return marked_pids(ports.temp_dir)

    supervisor = _supervisor(pids)
    if supervisor is not None:
        signal_pids([supervisor], signal.SIGTERM)
        _wait(lambda: supervisor in left(), 2 * grace_s + 5)  # as long as its own stop may take
    signal_pids(left(), signal.SIGTERM)
    _wait(left, grace_s)
    signal_pids(left(), signal.SIGKILL)  # what SIGTERM did not end (the GCS often lingers)
    _wait(left, 5, poll_s=0.1)  # gone, ports released, before a next `make run` checks them
    return len(pids)


def _with_access_log(config: Path) -> None:
    """Serve's access lines and the INFO lines of deployments/serving/logs.py (prediction ids)."""
    doc = yaml.safe_load(config.read_text())
    doc["logging_config"] = {**doc.get("logging_config", {}), "enable_access_log": True, "log_level": "INFO"}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


def start(ports: Ports, *, access_log: bool = False) -> int:
    problem = preflight(ports)
    if problem:
        print(f"make run: {problem}", file=sys.stderr)
        return 1
    try:
        base_env = make_run_env()  # reads the OPENSESAME_* settings: a bad one stops here, named
    except SettingsError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    print(ports.banner(), flush=True)
    # With the access log on, lines are written as they come rather than 1000 at a time (the
    # buffer RAY_SERVE_THROUGHPUT_OPTIMIZED sets): someone is reading them.
    env = {**base_env, **({"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"} if access_log else {})}
    head = RayHead(
        env=env, port=ports.ray, temp_dir=ports.temp_dir, dashboard=True,
        haproxy_ports=(ports.haproxy_metrics, ports.haproxy_stats), bind_host=ports.host,
        reserved_ports=(ports.http,),
        extra_args=("--metrics-export-port", str(ports.metrics),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports.dashboard)),
    )
    config = write_config(Path(ports.temp_dir) / "serve_config.yaml", port=ports.http, host=ports.host)
    if access_log:
        _with_access_log(config)
    driver: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt for it.
    signal.signal(signal.SIGINT, on_signal)
    try:
        head.start()
        # The serve CLI talks to this head only: --address, never RAY_ADDRESS or a default.
        driver = subprocess.Popen([str(head.bin / "serve"), "run", "--address", head.address, str(config)],
                                  env=head.env, cwd=ROOT)
        return driver.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        print(f"make run: stopping (Ray port {ports.ray})", file=sys.stderr, flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or stop must not leave orphans
            signal.signal(signum, signal.SIG_IGN)
        if driver is not None and driver.poll() is None:
            # SIGTERM makes Ray's driver print a native stack dump and an atexit traceback into
            # this terminal; the cluster it drives goes right after, so nothing of it is lost.
            driver.kill()
            driver.wait()
        stop(ports)
        head.log.close()


def _ports(args: argparse.Namespace) -> Ports:
    return Ports(host=args.host, http=args.port, ray=args.ray_port, metrics=args.metrics_port,
                 dashboard=args.dashboard_port, haproxy_metrics=args.haproxy_metrics_port,
                 haproxy_stats=args.haproxy_stats_port)


def main(argv: Sequence[str] | None = None) -> int:
    default = Ports()
    parser = argparse.ArgumentParser(prog="python -m tools.run", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "preflight"])
    parser.add_argument("--host", default=default.host, help="HTTP bind address (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=default.http)
    parser.add_argument("--ray-port", type=int, default=default.ray)
    parser.add_argument("--metrics-port", type=int, default=default.metrics)
    parser.add_argument("--dashboard-port", type=int, default=default.dashboard)
    parser.add_argument("--haproxy-metrics-port", type=int, default=default.haproxy_metrics)
    parser.add_argument("--haproxy-stats-port", type=int, default=default.haproxy_stats)
    parser.add_argument("--access-log", action="store_true",
                        help="Serve's access log and a line per prediction (level INFO)")
    args = parser.parse_args(argv)
    ports = _ports(args)
    if args.command == "start":
        return start(ports, access_log=args.access_log)
    if args.command == "preflight":
        problem = preflight(ports)
        print(problem or "nothing in the way")
        return 1 if problem else 0
    n = stop(ports)
    print(f"make stop: {n} processes of `make run` (Ray port {ports.ray}) stopped" if n
          else f"make stop: nothing of `make run` running (Ray port {ports.ray})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
