"""Hypothesis state machine: the bulkhead against a model (FIFO queue, timeouts, cancellation)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resilient import BulkheadFullError
from resilient.concurrency import Bulkhead
from resilient.testing import FakeClock

MAX_CONCURRENT = 2
MAX_QUEUED = 3
QUEUE_TIMEOUT = 5.0


class BulkheadMachine(RuleBasedStateMachine):
    """Calls start, finish, get cancelled and time out; the bulkhead must match the model."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.bh = Bulkhead(MAX_CONCURRENT, max_queued=MAX_QUEUED, queue_timeout=QUEUE_TIMEOUT, clock=self.clock)
        self.gates: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.entered: set[int] = set()
        self.next_id = 0
        # The model.
        self.running: list[int] = []
        self.queue: list[tuple[int, float]] = []  # (call, enqueued at)
        self.rejected = 0
        self.outcomes: dict[int, str] = {}  # call -> "rejected" | "done" | "cancelled"

    def teardown(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        self._settle()
        self.loop.close()

    def _settle(self) -> None:
        async def spin() -> None:
            for _ in range(10):
                await asyncio.sleep(0)

        self.loop.run_until_complete(spin())

    async def _body(self, i: int) -> str:
        self.entered.add(i)
        await self.gates[i].wait()
        return "done"

    def _promote(self) -> None:
        if self.queue and len(self.running) < MAX_CONCURRENT:
            call, _ = self.queue.pop(0)
            self.running.append(call)

    @rule()
    def start_call(self) -> None:
        i = self.next_id
        self.next_id += 1
        self.gates[i] = asyncio.Event()
        self.tasks[i] = self.loop.create_task(self.bh.run(self._body, i))
        if len(self.running) < MAX_CONCURRENT and not self.queue:
            self.running.append(i)
        elif len(self.queue) < MAX_QUEUED:
            self.queue.append((i, self.clock.now()))
        else:
            self.rejected += 1
            self.outcomes[i] = "rejected"
        self._settle()

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish_running(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.running))
        self.gates[i].set()
        self.running.remove(i)
        self.outcomes[i] = "done"
        self._promote()
        self._settle()

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def cancel_running(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self.running))
        self.tasks[i].cancel()
        self.running.remove(i)
        self.outcomes[i] = "cancelled"
        self._promote()
        self._settle()

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        i, at = data.draw(st.sampled_from(self.queue))
        self.tasks[i].cancel()
        self.queue.remove((i, at))
        self.outcomes[i] = "cancelled"
        self._settle()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        now = self.clock.now()
        expired = [(i, at) for i, at in self.queue if at + QUEUE_TIMEOUT <= now]
        for item in expired:
            self.queue.remove(item)
            self.rejected += 1
            self.outcomes[item[0]] = "rejected"
        self._settle()

    @invariant()
    def counts_match(self) -> None:
        assert self.bh.running == len(self.running)
        assert self.bh.queued == len(self.queue)
        assert self.bh.rejected == self.rejected

    @invariant()
    def running_calls_have_entered(self) -> None:
        for i in self.running:
            assert i in self.entered
        for i, _ in self.queue:
            assert i not in self.entered
            assert not self.tasks[i].done()

    @invariant()
    def finished_calls_match(self) -> None:
        for i, outcome in self.outcomes.items():
            task = self.tasks[i]
            assert task.done(), (i, outcome)
            if outcome == "cancelled":
                assert task.cancelled()
            elif outcome == "done":
                assert task.result() == "done"
            else:
                assert isinstance(task.exception(), BulkheadFullError)


TestBulkheadMachine = BulkheadMachine.TestCase
TestBulkheadMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
