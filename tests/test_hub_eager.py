"""start_eagerly (wsgate.hub.eager): a coroutine runs at once, and gets a task only for what comes after its
first wait — with results, exceptions and cancellation where a task would put them."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.hub.eager import start_eagerly


async def test_a_coroutine_that_never_waits_runs_to_the_end_at_once() -> None:
    done: list[str] = []

    async def command() -> None:
        done.append("ran")

    assert start_eagerly(command()) is None
    assert done == ["ran"]


async def test_the_rest_of_a_coroutine_that_waits_goes_on_in_a_task() -> None:
    steps: list[object] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def command() -> None:
        steps.append("before")
        steps.append(await gate)
        await asyncio.sleep(0)  # a bare yield to the loop
        steps.append("after")

    task = start_eagerly(command())
    assert task is not None
    assert steps == ["before"]  # up to the first wait, before any loop iteration
    gate.set_result("value")
    await asyncio.wait_for(task, 5)
    assert steps == ["before", "value", "after"]


async def test_exceptions_surface_where_they_would_without_it() -> None:
    async def fails_at_once() -> None:
        raise ValueError("now")

    with pytest.raises(ValueError, match="now"):
        start_eagerly(fails_at_once())

    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails_later() -> None:
        await gate
        raise KeyError("later")

    task = start_eagerly(fails_later())
    assert task is not None
    gate.set_result(None)
    with pytest.raises(KeyError):
        await asyncio.wait_for(task, 5)


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    cleaned: list[bool] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        try:
            await gate
        finally:
            cleaned.append(True)

    task = start_eagerly(waits())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    assert gate.cancelled()
