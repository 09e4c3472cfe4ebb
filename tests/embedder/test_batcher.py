"""The micro-batcher on its own: greedy batching, fan-out of results and errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from embedder.batcher import BatcherClosedError, MicroBatcher


def _slow_double(items: list[int]) -> list[int]:
    time.sleep(0.05)  # a model run: while it runs, new requests queue up
    return [2 * i for i in items]


async def test_greedy_batches_form_under_load_and_results_go_back_to_their_callers() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(_slow_double, max_batch_size=8, max_delay_s=0.0)
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(20)))
    assert results == [[2 * i] for i in range(20)]
    assert batcher.stats.items == 20
    assert batcher.stats.largest_batch > 1  # concurrent callers shared runs without any waiting
    assert batcher.stats.batches < 20
    await batcher.close()


async def test_a_lone_request_does_not_wait_for_company() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch_size=32, max_delay_s=0.0)
    await batcher.submit([1])  # start the worker
    t0 = time.perf_counter()
    assert await batcher.submit([7]) == [7]
    assert time.perf_counter() - t0 < 0.05
    delayed: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch_size=32, max_delay_s=0.2)
    t0 = time.perf_counter()
    assert await delayed.submit([7]) == [7]
    assert time.perf_counter() - t0 >= 0.15  # a positive delay waits for the batch to fill
    await batcher.close()
    await delayed.close()


async def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model run failed")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(flaky, max_batch_size=4, max_delay_s=0.0)
    with pytest.raises(RuntimeError, match="model run failed"):
        await batcher.submit([1])
    assert await batcher.submit([2]) == [2]
    await batcher.close()
    with pytest.raises(BatcherClosedError):
        await batcher.submit([3])


async def test_close_is_bounded_when_a_batch_does_not_end_and_fails_what_was_left() -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stuck(items: list[int]) -> list[int]:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)  # a run that hangs until told
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(stuck, max_batch_size=1, max_delay_s=0.0)
    first = asyncio.ensure_future(batcher.submit([1]))
    queued = asyncio.ensure_future(batcher.submit([2]))  # waits behind the stuck batch
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    await batcher.close(timeout_s=0.2)
    assert time.perf_counter() - began < 2.0
    with pytest.raises(BatcherClosedError):
        await queued
    release.set()
    first.cancel()


async def test_caller_runs_when_idle_with_the_same_results_as_a_batch() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(_slow_double, max_batch_size=8, max_delay_s=0.0)
    here = await asyncio.to_thread(batcher.run_here, [3, 4])  # a worker thread, as the gateway's
    assert here == await batcher.submit([3, 4]) == [6, 8]
    assert batcher.stats.batches == 2 and batcher.stats.items == 4  # both runs counted
    await batcher.close()
    assert batcher.run_here([1]) is None  # closed: the caller's submit raises BatcherClosedError


async def test_caller_runs_steps_aside_while_a_batch_runs_or_items_wait() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def held(items: list[int]) -> list[int]:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(held, max_batch_size=4, max_delay_s=0.0)
    running = asyncio.ensure_future(batcher.submit([1]))
    await started.wait()
    assert await asyncio.to_thread(batcher.run_here, [2]) is None  # a batch is running
    queued = asyncio.ensure_future(batcher.submit([3]))
    await asyncio.sleep(0.01)
    release.set()
    assert await running == [1] and await queued == [3]
    assert await asyncio.to_thread(batcher.run_here, [5]) == [5]  # idle again
    await batcher.close()


async def test_callers_that_try_caller_runs_first_still_share_batches_under_load() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(_slow_double, max_batch_size=8, max_delay_s=0.0)

    async def search(i: int) -> list[int]:  # the gateway's order: in its worker thread first, else queue
        here = await asyncio.to_thread(batcher.run_here, [i])
        return here if here is not None else await batcher.submit([i])

    results = await asyncio.gather(*(search(i) for i in range(20)))
    assert results == [[2 * i] for i in range(20)]
    assert batcher.stats.items == 20 and batcher.stats.largest_batch > 1 and batcher.stats.batches < 20
    await batcher.close()


def test_batch_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(_slow_double, max_batch_size=0)
