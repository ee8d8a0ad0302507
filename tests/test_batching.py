"""The ingress's Coalescer and the receivers' adaptive wait, on plain asyncio (no Ray)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from deployments.serving.batching import (
    AdaptiveWait,
    BatchConfig,
    Coalescer,
    CoalescerConfig,
    IngressConfig,
    apply_batch_config,
)


class Downstream:
    """A stand-in for the graph: takes ``delay_s`` per batch, records the batches it got."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        return [i * 10 for i in items]


# Past the configurable maximum (0.1 s), so that "it did not wait" can't be mistaken for a slow
# machine's scheduling delay.
LONG_WAIT_S = 3.0


def _long_wait(**fields: Any) -> CoalescerConfig:
    return CoalescerConfig.model_construct(**{**CoalescerConfig().model_dump(), **fields,
                                              "batch_wait_timeout_s": LONG_WAIT_S})


def test_an_idle_request_leaves_at_once_alone() -> None:
    async def main() -> float:
        down = Downstream(delay_s=0.0)
        co = Coalescer(down, _long_wait(max_batch_size=16))
        start = time.perf_counter()
        assert await co(7) == 70
        assert down.batches == [[7]]
        return time.perf_counter() - start

    assert asyncio.run(main()) < LONG_WAIT_S / 2  # not the wait: nothing else was in flight


def test_batches_grow_with_load_and_results_go_to_their_callers() -> None:
    async def main() -> tuple[Downstream, Coalescer[int, int]]:
        down = Downstream(delay_s=0.02)
        co = Coalescer(down, CoalescerConfig(max_batch_size=8, max_in_flight=1))
        results = await asyncio.gather(*(co(i) for i in range(40)))
        assert results == [i * 10 for i in range(40)]
        return down, co

    down, co = asyncio.run(main())
    assert max(len(b) for b in down.batches) == 8  # capped
    assert len(down.batches) == 5  # 40 requests in 5 calls, not 40
    assert [i for b in down.batches for i in b] == list(range(40))  # arrival order
    assert co.stats.summary()["items"] == 40


def test_closed_loop_clients_share_calls() -> None:
    """Sixteen clients, each sending again on its answer: batches settle near the load."""

    async def main() -> Downstream:
        down = Downstream(delay_s=0.01)
        co = Coalescer(down, CoalescerConfig(max_batch_size=32, max_in_flight=2))

        async def client(i: int) -> None:
            for n in range(10):
                assert await co(i * 100 + n) == (i * 100 + n) * 10

        await asyncio.gather(*(client(i) for i in range(16)))
        return down

    down = asyncio.run(main())
    sizes = [len(b) for b in down.batches]
    assert sum(sizes) == 160
    assert len(sizes) < 40 and sum(sizes) / len(sizes) >= 4


def test_an_error_in_an_items_place_reaches_only_that_caller() -> None:
    async def send(items: list[int]) -> list[object]:
        return [ValueError(f"bad {i}") if i == 2 else i for i in items]

    async def main() -> list[object]:
        co: Coalescer[int, object] = Coalescer(send)
        return await asyncio.gather(*(co(i) for i in range(4)), return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == 0 and out[1] == 1 and out[3] == 3
    assert isinstance(out[2], ValueError) and "bad 2" in str(out[2])


def test_a_failed_call_fails_its_batch_and_the_next_one_still_runs() -> None:
    calls = 0

    async def send(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("replica died")
        return items

    async def main() -> tuple[list[object], int]:
        co: Coalescer[int, int] = Coalescer(send, CoalescerConfig(max_in_flight=1))
        first = await asyncio.gather(co(1), co(2), return_exceptions=True)
        return first, await co(3)

    first, later = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert later == 3


def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    async def send(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        co: Coalescer[int, int] = Coalescer(send)
        await asyncio.gather(co(1), co(2))

    with pytest.raises(RuntimeError, match="got 1 results"):
        asyncio.run(main())


def test_wait_applies_only_while_a_batch_is_out() -> None:
    async def main() -> Downstream:
        down = Downstream(delay_s=0.03)
        co = Coalescer(down, CoalescerConfig(max_batch_size=64, batch_wait_timeout_s=0.01, max_in_flight=2))
        first = asyncio.create_task(co(0))  # leaves at once
        await asyncio.sleep(0.001)
        rest = [asyncio.create_task(co(i)) for i in range(1, 4)]  # gather for up to 10 ms
        await asyncio.gather(first, *rest)
        return down

    down = asyncio.run(main())
    assert down.batches == [[0], [1, 2, 3]]


def test_user_config_is_validated() -> None:
    co = Coalescer(Downstream())
    assert co.configure({"max_batch_size": 4}).max_batch_size == 4
    with pytest.raises(ValueError, match="max_in_flight"):
        co.configure({"max_in_flight": 0})
    with pytest.raises(ValueError, match="surprise"):
        IngressConfig.from_user_config({"batching": {}, "surprise": 1})
    assert IngressConfig.from_user_config(None).batching == CoalescerConfig()


class FakeBatchedMethod:
    def __init__(self) -> None:
        self.size, self.wait = None, None

    def set_max_batch_size(self, n: int) -> None:
        self.size = n

    def set_batch_wait_timeout_s(self, t: float) -> None:
        self.wait = t


def test_receivers_wait_only_while_busy() -> None:
    method, wait = FakeBatchedMethod(), AdaptiveWait()
    config = apply_batch_config(method, {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}, wait)
    assert config == BatchConfig(max_batch_size=8, batch_wait_timeout_s=0.005)
    assert method.size == 8 and method.wait == 0.0
    wait.before_call()
    assert method.wait == 0.0  # idle: the next batch starts at once
    with wait.running():
        wait.before_call()
        assert method.wait == 0.005  # busy: gathering costs no latency
    wait.before_call()
    assert method.wait == 0.0


def test_receiver_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        apply_batch_config(FakeBatchedMethod(), {"max_batch_size": 0})
    with pytest.raises(ValueError, match="batch_wait_timeout_s"):
        apply_batch_config(FakeBatchedMethod(), {"batch_wait_timeout_s": 5})


def test_a_full_batch_does_not_wait_out_the_timer() -> None:
    async def send(items: list[int]) -> list[int]:
        await asyncio.sleep(LONG_WAIT_S if items == [0] else 0.0)  # the first batch stays out
        return items

    async def main() -> float:
        co: Coalescer[int, int] = Coalescer(send, _long_wait(max_batch_size=4, max_in_flight=2))
        first = asyncio.create_task(co(0))
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        assert await asyncio.gather(*(co(i) for i in range(1, 5))) == [1, 2, 3, 4]
        took = time.perf_counter() - start
        await first
        return took

    assert asyncio.run(main()) < LONG_WAIT_S / 2  # full at once: it leaves without the wait
