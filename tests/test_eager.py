"""`start_eagerly`: the first step runs at once, as the task that goes on running it.

On Python 3.12+ it is asyncio's own ``eager_start``; on 3.11 it is sagaflow's
emulation. `.ci/run` runs this module on both, and every test states what
must hold on either.
"""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from sagaflow._eager import start_eagerly

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_a_coroutine_that_does_not_suspend_is_done_on_return():
    steps = []

    async def quick() -> int:
        steps.append("ran")
        return 42

    task = start_eagerly(quick())
    assert steps == ["ran"]  # before any trip through the event loop
    assert task.done()
    assert task.result() == 42


async def test_an_error_in_the_first_step_is_the_tasks_result():
    async def broken() -> None:
        raise ValueError("no")

    task = start_eagerly(broken())
    assert task.done()
    with pytest.raises(ValueError, match="no"):
        task.result()


async def test_a_suspended_task_goes_on_in_the_loop():
    gate = asyncio.Event()

    async def waits() -> str:
        await gate.wait()
        return "done"

    task = start_eagerly(waits())
    assert not task.done()
    assert task in asyncio.all_tasks()
    gate.set()
    assert await task == "done"


async def test_the_first_step_runs_as_the_new_task_and_the_caller_is_current_again():
    caller = asyncio.current_task()
    seen = []

    async def body() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    task = start_eagerly(body())
    assert asyncio.current_task() is caller
    await task
    assert seen == [task, task]


async def test_a_timeout_entered_in_the_first_step_cancels_the_new_task_only():
    async def slow() -> str:
        try:
            async with asyncio.timeout(0.01):  # bound to the current task
                await asyncio.sleep(3600)
        except TimeoutError:
            return "timed out"
        return "not timed out"

    task = start_eagerly(slow())
    assert await task == "timed out"
    assert asyncio.current_task().cancelling() == 0  # the caller was never cancelled


async def test_the_task_sees_a_copy_of_the_callers_context():
    request_id.set("r-1")

    async def body() -> str:
        seen = request_id.get()
        request_id.set("changed inside")
        await asyncio.sleep(0)
        return seen

    assert await start_eagerly(body()) == "r-1"
    assert request_id.get() == "r-1"


async def test_cancelling_a_suspended_task_cancels_its_coroutine():
    cleaned = []

    async def body() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(True)

    task = start_eagerly(body())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_many_tasks_finished_at_once_leave_nothing_scheduled():
    loop = asyncio.get_running_loop()

    async def quick() -> None:
        return None

    before = len(getattr(loop, "_ready", ()))
    tasks = [start_eagerly(quick()) for _ in range(100)]
    assert all(task.done() for task in tasks)
    # Nothing left for the loop to run: no handles queued for finished tasks.
    assert len(getattr(loop, "_ready", ())) == before
