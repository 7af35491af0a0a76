"""The task owner: tasks spawned from transport callbacks (outside any task) start and are
cancelled at close like any other, whatever async libraries are installed."""

from __future__ import annotations

import asyncio

import anyio

from dagserve.engine.tasks import TaskOwner


def test_spawn_from_a_callback_runs_and_close_cancels_everything():
    async def main() -> list:
        ran: list = []
        async with anyio.create_task_group() as group:
            owner = TaskOwner(group)
            started = asyncio.Event()

            async def work() -> None:
                ran.append("work")
                started.set()

            async def forever() -> None:
                await asyncio.sleep(3600)

            loop = asyncio.get_running_loop()
            loop.call_soon(lambda: owner.spawn(work, name="from a callback"))
            await asyncio.wait_for(started.wait(), 5)
            loop.call_soon(lambda: owner.spawn(forever, name="long"))
            await asyncio.sleep(0.05)
            loop.call_soon(lambda: owner.spawn(forever, name="queued at close"))
            await asyncio.wait_for(owner.close(), 5)
            late = owner.spawn(work, name="after close")
            assert late.finished
        return ran

    assert asyncio.run(main()) == ["work"]
