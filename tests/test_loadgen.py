"""The load generator's node sampler on real processes (no cluster needed)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from deployments.loadgen import NodeSampler, tree_cpu_ticks

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_a_process_that_stops_during_a_run_does_not_make_the_service_cpu_negative() -> None:
    # Like a replica autoscaled down in the middle of a level: it burned CPU before the run and
    # exits in it; a survivor burns CPU in the run and is still there at the end.
    leaver = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.6) + "input()"],
                              stdin=subprocess.PIPE, text=True)
    survivor = None
    try:
        while _cpu_s(leaver.pid) < 0.5:
            time.sleep(0.01)

        async def run() -> dict[str, float]:
            nonlocal survivor
            async with NodeSampler(lambda: [os.getpid()], interval_s=0.1) as sampler:
                leaver.communicate("\n", timeout=10)
                survivor = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.3) + "input()"],
                                            stdin=subprocess.PIPE, text=True)
                while _cpu_s(survivor.pid) < 0.25:
                    await asyncio.sleep(0.01)
            return sampler.result()

        result = asyncio.run(run())
        assert result["service_cpu_pct"] > 0
    finally:
        for p in (leaver, survivor):
            if p is not None and p.poll() is None:
                p.kill()


def _cpu_s(pid: int) -> float:
    return tree_cpu_ticks([pid])[pid] / os.sysconf("SC_CLK_TCK")
