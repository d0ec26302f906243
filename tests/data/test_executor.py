"""The local executor: ``workers - 1`` pool processes plus the driver's own slot, each
task run once, a task's error raised with its message."""

from __future__ import annotations

import os
import textwrap

import pytest

from fmforge.data.executor import ExecutorSpec, TaskRunner

TASKS = textwrap.dedent("""
    import os, time
    from pathlib import Path
    from fmforge.data.executor import in_driver_slot

    def record(p):
        time.sleep(0.2)
        if p.get("fail"):
            raise ValueError(f"task {p['i']} failed on purpose")
        Path(p["out"], f"{p['i']:03d}").write_text(f"{os.getpid()} {in_driver_slot()}")
""")


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    """A task module the spawned pool processes can import (they get this sys.path)."""
    (tmp_path / "slot_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import slot_tasks

    out = tmp_path / "out"
    out.mkdir()
    return slot_tasks, out


def test_the_driver_runs_tasks_beside_one_pool_process_and_each_runs_once(tasks):
    mod, out = tasks
    with TaskRunner(ExecutorSpec("local", workers=2)) as runner:
        runner.run(mod.record, [{"i": i, "out": str(out)} for i in range(16)], "test")
        assert runner._pool._max_workers == 1  # one process fewer than workers: the driver is the other
    done = {p.name: p.read_text().split() for p in out.iterdir()}
    assert sorted(done) == [f"{i:03d}" for i in range(16)]  # every task, once (a file each)
    by_pid = {}
    for pid, slot in done.values():
        by_pid.setdefault(int(pid), set()).add(slot)
    assert os.getpid() in by_pid and len(by_pid) == 2
    assert by_pid[os.getpid()] == {"True"}  # the driver's tasks ran in its slot
    assert all(s == {"False"} for pid, s in by_pid.items() if pid != os.getpid())


@pytest.mark.parametrize("failing", [0, 7])
def test_a_task_error_is_raised_with_its_message(tasks, failing):
    mod, out = tasks
    payloads = [{"i": i, "out": str(out), "fail": i == failing} for i in range(10)]
    with pytest.raises(ValueError, match=f"task {failing} failed on purpose"):
        with TaskRunner(ExecutorSpec("local", workers=2)) as runner:
            runner.run(mod.record, payloads, "test")
    assert f"{failing:03d}" not in {p.name for p in out.iterdir()}
