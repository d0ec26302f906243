"""benchmarks/harness.py, how every benchmark measures, checked against things known
from outside it: a child that touches a known number of MB shows at least that as its
peak resident set; a child busy for a known CPU time shows it in the CPU-seconds; a
sleep is wall time and no CPU time; four workers at once finish eight 0.1 s jobs in
0.2 s. Each child is small and short: the whole file runs in a few seconds."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_harness():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCH))


harness = _load_harness()

# A child that holds MB megabytes (every page written) for HOLD seconds.
HOLD = "import time, sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep({hold})"
# A child busy until its own CPU clock reaches SECONDS.
BUSY = "import time, sys\nwhile time.process_time() < float(sys.argv[1]): pass\nprint('done')"


def test_run_tree_reads_the_peak_of_every_process_in_the_tree():
    """The root touches 120 MB and starts a child that touches 60 MB: each shows at
    least what it touched, and the tree at once at least both."""
    child = HOLD.format(hold=0.4)
    root = (f"import subprocess, sys; b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            f"subprocess.run([sys.executable, '-c', {child!r}, '60'], check=True); print('ok')")
    out, peak = harness.run_tree([sys.executable, "-c", root])
    assert out.strip() == "ok"
    assert peak.root_mb >= 120
    assert len(peak.children) == 1
    assert peak.largest_child_mb >= 60
    assert peak.rss_sum_peak_mb >= 180


def test_a_reaped_childs_cpu_time_counts_and_a_sleep_is_wall_not_cpu():
    s = harness.measure(lambda: subprocess.run([sys.executable, "-c", BUSY, "0.6"], check=True,
                                               capture_output=True))
    assert 0.6 <= s.cpu_s < 0.6 + 1.5  # the busy loop, plus the interpreter's start-up
    assert s.wall_s >= 0.6 * 0.99
    with harness.Timer() as t:
        time.sleep(0.3)
    assert t.wall_s >= 0.3 and t.cpu_s < 0.1
    assert len(t.sample.load_at_start) == 3


def test_process_cpu_s_reads_what_another_process_spent():
    proc = subprocess.Popen([sys.executable, "-c", BUSY + "\nimport time; time.sleep(5)", "0.5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "done"
        assert 0.5 - 0.02 <= harness.process_cpu_s(proc.pid) < 0.5 + 1.5  # procfs counts 1/100 s ticks
    finally:
        proc.kill()
        proc.wait()
    assert harness.process_cpu_s(proc.pid) is None  # gone


def test_device_peak_on_cpu_sees_what_a_fresh_process_touched_after_the_mark():
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import harness\n"
            "p = harness.DevicePeak('cpu'); p.mark()\n"
            "b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096])\n"
            "print(json.dumps({'peak': p.peak_bytes(), 'held': p.held_bytes(), 'method': p.method}))")
    r = harness.run_json([sys.executable, "-c", code, str(BENCH)])
    assert 80 * 2**20 <= r["peak"] < 100 * 2**20
    assert r["held"] is None and "VmHWM" in r["method"]


def test_run_json_returns_the_last_line_and_names_a_failure():
    assert harness.run_json([sys.executable, "-c", "print('warming up'); print('{\"a\": 1}')"]) == {"a": 1}
    with pytest.raises(RuntimeError, match="exit 3"):
        harness.run_json([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_timed_steps_times_each_step_and_syncs_before_each_clock_read():
    synced = []
    times, values = harness.timed_steps(lambda: time.sleep(0.05) or len(synced), 3, sync=lambda: synced.append(1))
    assert len(times) == 3 and all(0.05 <= t < 0.5 for t in times)
    assert values == [1, 2, 3]  # one sync before the first step, then one after each
    assert len(synced) == 4


def test_interleaved_reverses_every_other_round_and_rates_pair_by_round():
    order = []
    samples = harness.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    a = [harness.Sample(2.0, 1.0), harness.Sample(1.0, 1.0), harness.Sample(4.0, 1.0)]
    b = [harness.Sample(1.0, 1.0), harness.Sample(1.0, 1.0), harness.Sample(1.0, 1.0)]
    rates = harness.per_wall({"a": a, "b": b}, 8.0)
    assert rates == {"a": [4.0, 8.0, 2.0], "b": [8.0, 8.0, 8.0]}
    assert harness.paired_ratio(rates["a"], rates["b"]) == 0.5  # median of 0.5, 1, 0.25
    assert len(samples["a"]) == 3


def test_percentile_is_a_measured_value_by_nearest_rank():
    xs = list(range(1, 101))
    assert harness.percentile(xs, 0.99) == 99  # rank round(0.99 * 99) = 98 of 0..99
    assert harness.percentile(xs, 0.5) == 51  # round(49.5) = 50 (banker's rounding to even)
    assert harness.percentile([3.0], 0.99) == 3.0


def test_concurrently_keeps_the_given_number_of_jobs_in_flight():
    live, most = [0], [0]

    async def job(i: int) -> int:
        live[0] += 1
        most[0] = max(most[0], live[0])
        await asyncio.sleep(0.1)
        live[0] -= 1
        return i

    results, sample = asyncio.run(harness.concurrently(job, list(range(8)), 4))
    assert sorted(results) == list(range(8))
    assert most[0] == 4
    assert 0.2 <= sample.wall_s < 0.35  # two waves of 0.1 s, not eight


# The root holds 300 MB and forks; the child waits 0.5 s before it execs a small
# program. Between fork and exec the child maps the root's pages (shared, copy on
# write), so its VmRSS and VmHWM read 300 MB; exec starts its bookkeeping afresh.
FORK_THEN_EXEC = """
import os, sys, time
b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])
pid = os.fork()
if pid == 0:
    time.sleep(0.5)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(0.5)"])
os.waitpid(pid, 0)
"""


def test_a_child_polled_between_fork_and_exec_is_charged_its_own_peak_not_its_parents():
    out, peak = harness.run_tree([sys.executable, "-c", FORK_THEN_EXEC])
    assert peak.root_mb >= 300
    assert len(peak.children) == 1
    # the program the child became holds a bare interpreter, far below the root's 300 MB
    assert peak.largest_child_mb < 100, peak.children
