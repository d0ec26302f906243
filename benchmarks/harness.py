"""How the benchmarks measure, in one place (issue 30), so each script reads as what it compares.

- ``machine()``: the CPU model, cores, Python, date and the load average, recorded
  with every figure (the machine is often shared: CPU-seconds are steadier than wall).
- ``interleaved(cases, repeats)``: each case run ``repeats`` times, the order
  reversed every other round, each run's wall seconds and CPU-seconds (this
  process's threads plus its children reaped meanwhile, e.g. a process pool's
  workers) and the load average when it started.
- ``run_tree(cmd)``: a command in a fresh process, its peak resident memory and
  that of every process it starts, read from ``VmHWM`` in procfs. Not
  ``ru_maxrss``: a child inherits it across fork and exec, so every row would
  show the parent's peak. ``VmHWM`` starts afresh at exec; a forked child's
  starts at its parent's current RSS, and pages it shares with the parent count
  in both (the sum over the tree is an upper bound). Also the largest sum of
  ``VmRSS`` over the tree seen at one moment (polled every ``POLL_S``).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

POLL_S = 0.02


def machine() -> dict:
    """What the figures were measured on, and how busy it was at that moment."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux names the CPU model there; elsewhere the platform's name stands
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_average": load()}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_now() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    load_at_start: list[float] = field(default_factory=list)

    def per_wall(self, amount: float) -> float:
        return amount / self.wall_s

    def per_cpu(self, amount: float) -> float:
        return amount / self.cpu_s


def measure(fn: Callable[[], object]) -> Sample:
    """One call's wall and CPU seconds (threads included; children once reaped)."""
    start_load = load()
    c, t = _cpu_now(), time.perf_counter()
    fn()
    return Sample(time.perf_counter() - t, _cpu_now() - c, start_load)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int = 2,
                before: Callable[[str], None] | None = None) -> dict[str, list[Sample]]:
    """Each case ``repeats`` times, in order then reversed, alternately; ``before(name)``
    runs untimed before each call (e.g. removing the previous run's output)."""
    out: dict[str, list[Sample]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if before is not None:
                before(name)
            out[name].append(measure(cases[name]))
    return out


def best_rates(samples: dict[str, list[Sample]], amount: float, digits: int = 2) -> dict:
    """Per case: every run's amount per wall second and per CPU-second, and the best of each."""
    res = {}
    for name, ss in samples.items():
        wall = [round(s.per_wall(amount), digits) for s in ss]
        cpu = [round(s.per_cpu(amount), digits) for s in ss]
        res[name] = {"per_s": wall, "per_cpu_s": cpu, "best_per_s": max(wall), "best_per_cpu_s": max(cpu),
                     "load_at_start": [s.load_at_start for s in ss]}
    return res


def hwm_mb(pid: int | str = "self") -> float | None:
    """A live process's peak resident set (``VmHWM``), MB; None when it is gone."""
    return _status_mb(pid, "VmHWM:")


def _status_mb(pid: int | str, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


@dataclass
class TreePeak:
    """Peak memory of a process and everything it started (MB)."""

    root_mb: float = 0.0
    children: dict[int, float] = field(default_factory=dict)  # pid -> its VmHWM
    rss_sum_peak_mb: float = 0.0  # the largest sum of VmRSS over the tree at one poll
    wall_s: float = 0.0

    @property
    def largest_child_mb(self) -> float:
        return max(self.children.values(), default=0.0)

    @property
    def hwm_sum_mb(self) -> float:
        return self.root_mb + sum(self.children.values())

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("children")
        return {**{k: round(v, 1) for k, v in d.items()}, "processes": 1 + len(self.children),
                "largest_child_mb": round(self.largest_child_mb, 1), "hwm_sum_mb": round(self.hwm_sum_mb, 1)}


# A process's CPU time reaches its parent's RUSAGE_CHILDREN only when the parent
# waits for it. multiprocessing's forkserver (datatrove's default start method)
# is never waited for: its CPU time, and that of the pool workers it forked and
# reaped, would be lost. With ``reap_orphans`` the command runs under this wrapper, a child
# subreaper (prctl PR_SET_CHILD_SUBREAPER): orphans are re-parented to it and it
# waits for every one of them, so the wrapper's own rusage, read by the harness
# once it is reaped, holds the whole tree's CPU time.
SUBREAPER = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
rc = subprocess.call(sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
sys.exit(rc)
"""


def run_tree(cmd: list[str], env: dict | None = None, timeout: float | None = None,
             reap_orphans: bool = False) -> tuple[str, TreePeak]:
    """Run ``cmd`` in a fresh process; its stdout and the tree's peaks. Raises
    ``RuntimeError`` with the end of stderr when it fails. ``reap_orphans``: run it
    under ``SUBREAPER`` so a forkserver's CPU time is counted too (the wrapper is
    then the tree's root)."""
    if reap_orphans:
        cmd = [sys.executable, "-c", SUBREAPER, *cmd]
    peak = TreePeak()
    t = time.perf_counter()
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        import threading

        chunks: dict[str, str] = {}
        readers = [threading.Thread(target=lambda k, s: chunks.__setitem__(k, s.read()), args=(k, s), daemon=True)
                   for k, s in (("out", proc.stdout), ("err", proc.stderr))]
        for r in readers:
            r.start()
        while proc.poll() is None:
            pids = [proc.pid, *_descendants(proc.pid)]
            total = 0.0
            for p in pids:
                hwm, rss = hwm_mb(p), _status_mb(p, "VmRSS:")
                if hwm is None:
                    continue
                total += rss or 0.0
                if p == proc.pid:
                    peak.root_mb = max(peak.root_mb, hwm)
                else:
                    peak.children[p] = max(peak.children.get(p, 0.0), hwm)
            peak.rss_sum_peak_mb = max(peak.rss_sum_peak_mb, total)
            if timeout is not None and time.perf_counter() - t > timeout:
                proc.kill()
            time.sleep(POLL_S)
        for r in readers:
            r.join()
    peak.wall_s = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{chunks.get('err', '')[-3000:]}")
    return chunks.get("out", ""), peak


def report_root_hwm(out: str, peak: TreePeak) -> TreePeak:
    """A child may print its own final ``VmHWM`` as ``{"self_hwm_mb": ...}`` on its last
    line (exact, where polling can miss a last growth); take the larger."""
    import json

    try:
        own = json.loads(out.strip().splitlines()[-1]).get("self_hwm_mb")
    except (ValueError, IndexError, AttributeError):
        own = None
    if own:
        peak.root_mb = max(peak.root_mb, float(own))
    return peak
