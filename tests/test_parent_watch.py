"""The parent watch: a worker is told to leave exactly when its parent's sentinel says the parent exited."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import anyio
import pytest

from megagate.parent_watch import leave_with, serving_parent

pytestmark = pytest.mark.anyio


class Parent:
    """What `leave_with` reads of a parent process: its pid and sentinel (here the read end of a pipe whose write
    end stands for the parent: closing it is the parent's exit, as multiprocessing's own sentinel works)."""

    def __init__(self) -> None:
        self.sentinel, self.end = os.pipe()
        self.pid = 4242


async def test_the_worker_is_asked_to_leave_when_the_parent_exits_and_not_before() -> None:
    parent, asked = Parent(), []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(leave_with, parent, lambda: asked.append(True))  # type: ignore[arg-type]
            await anyio.wait_all_tasks_blocked()
            assert asked == []  # the parent lives: the watch waits, costing nothing
            os.close(parent.end)  # the parent exits
        assert asked == [True]
    finally:
        os.close(parent.sentinel)


def test_a_process_started_directly_has_no_parent_to_watch() -> None:
    assert serving_parent() is None  # pytest, hypercorn -w 0, an embedding app: single-process serving unaffected


def _report_parent(queue: Any) -> None:
    parent = serving_parent()
    queue.put(None if parent is None else parent.pid)


def test_a_spawned_worker_watches_the_process_that_started_it() -> None:
    context = multiprocessing.get_context("spawn")  # as hypercorn starts its workers
    queue = context.Queue()
    child = context.Process(target=_report_parent, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=30) == os.getpid()
    finally:
        child.join(30)
        queue.close()
