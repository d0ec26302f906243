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
- ``run_json(cmd)``: a command in a fresh process, unpolled, and the JSON object its
  last line prints (a worker that times itself).
- Inside a process: ``Timer`` (a block's wall and CPU seconds, ``sync`` for a GPU),
  ``timed_steps`` (each step of a loop), ``DevicePeak`` (the peak memory of a stretch
  of work: ``torch.cuda.max_memory_allocated`` on CUDA, ``VmHWM`` on CPU),
  ``torch_allocator_peak`` (what torch's CPU allocator held at most).
- Summaries: ``best_rates``, ``per_wall`` and ``paired_ratio`` (interleaved rounds),
  ``percentile``; ``concurrently`` (async jobs at a fixed concurrency, a server's
  clients) and ``process_cpu_s`` (what another process, the server, spent).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

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
             reap_orphans: bool = False, trace: list | None = None) -> tuple[str, TreePeak]:
    """Run ``cmd`` in a fresh process; its stdout and the tree's peaks. Raises
    ``RuntimeError`` with the end of stderr when it fails. ``reap_orphans``: run it
    under ``SUBREAPER`` so a forkserver's CPU time is counted too (the wrapper is
    then the tree's root). ``trace``: a list that gets one ``(seconds, {pid: VmRSS
    MB})`` per poll, to see which process holds the memory when."""
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
            seen: dict[int, float] = {}
            for p in pids:
                hwm, rss = hwm_mb(p), _status_mb(p, "VmRSS:")
                if hwm is None:
                    continue
                total += rss or 0.0
                seen[p] = round(rss or 0.0, 1)
                # The last reading, not the largest: VmHWM only rises within one
                # program, and exec starts it afresh, so the last is the peak of the
                # program the process became. A poll between a child's fork and its
                # exec reads the parent's shared pages (the largest would keep them).
                if p == proc.pid:
                    peak.root_mb = hwm
                else:
                    peak.children[p] = hwm
            peak.rss_sum_peak_mb = max(peak.rss_sum_peak_mb, total)
            if trace is not None:
                trace.append((round(time.perf_counter() - t, 3), seen))
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


# -- inside a process: timing a block or a loop, a device's peak memory ---------------------

def machine_line(m: dict | None = None) -> str:
    """``machine()`` as one line for a printed table's heading."""
    m = m or machine()
    la = m["load_average"]
    return (f"{m['cpu']}, {m['cpus']} CPUs, Python {m['python']}, {m['date']}, "
            f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


class Timer:
    """Wall and CPU seconds of a ``with`` block (as ``measure``): ``with Timer() as t: ...``,
    then ``t.wall_s``, ``t.cpu_s``, ``t.sample``. ``sync`` runs before the clock is read at
    the end, so work a GPU still has queued counts inside the block (``device_sync``).
    ``Timer().start()`` and ``elapsed()`` read the wall clock without stopping it (the time
    to a first token)."""

    def __init__(self, sync: Callable[[], object] | None = None):
        self.sync = sync
        self.sample: Sample | None = None

    def start(self) -> "Timer":
        self._load = load()
        self._cpu, self._wall = _cpu_now(), time.perf_counter()
        return self

    __enter__ = start

    def elapsed(self) -> float:
        return time.perf_counter() - self._wall

    def __exit__(self, *exc) -> None:
        if self.sync is not None and exc[0] is None:
            self.sync()
        self.sample = Sample(time.perf_counter() - self._wall, _cpu_now() - self._cpu, self._load)

    @property
    def wall_s(self) -> float:
        return self.sample.wall_s

    @property
    def cpu_s(self) -> float:
        return self.sample.cpu_s


def timed_steps(step: Callable[[], object], n: int,
                sync: Callable[[], object] | None = None) -> tuple[list[float], list]:
    """``step()`` ``n`` times: each call's wall seconds and what it returned. ``sync``
    runs before the first call and before each clock read, so on a GPU each figure is
    that step's own work, not the previous step's tail."""
    times, values = [], []
    if sync is not None:
        sync()
    for _ in range(n):
        t = time.perf_counter()
        values.append(step())
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
    return times, values


def device_sync(device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device, None elsewhere (a CPU op is done
    when it returns)."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def rss_mb(pid: int | str = "self") -> float | None:
    """A live process's resident set now (``VmRSS``), MB; None when it is gone."""
    return _status_mb(pid, "VmRSS:")


def hwm_bytes(pid: int | str = "self") -> int | None:
    """``hwm_mb`` in bytes (procfs counts kB, so this is exact)."""
    mb = hwm_mb(pid)
    return None if mb is None else int(mb * 2**20)


class DevicePeak:
    """Peak memory of this process's work on ``device`` since ``mark()``, less what it
    held at the mark.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors held by torch's caching
    allocator; the peak is reset at the mark) less ``memory_allocated`` at the mark.
    CPU: the process's ``VmHWM`` less its ``VmHWM`` at the mark. A process's
    ``VmHWM`` cannot be reset: measure in a fresh process, after a tiny warm-up has
    made the one-time allocations (thread pools, the autograd engine), so they fall
    into the mark. ``restart()`` forgets the peak so far on CUDA (the mark stays), to
    see a steady state; on CPU it cannot, and does nothing."""

    def __init__(self, device):
        self.cuda = str(device).split(":")[0] == "cuda"  # a name or a torch.device; torch only on CUDA
        self.base = 0

    @property
    def method(self) -> str:
        return "torch.cuda.max_memory_allocated()" if self.cuda else "peak RSS (VmHWM)"

    def mark(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = hwm_bytes()

    def restart(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self) -> int:
        """The peak since the mark (or the last ``restart``), less the mark's holding."""
        if not self.cuda:
            return hwm_bytes() - self.base
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base

    def held_bytes(self) -> int | None:
        """What stays allocated now, less the mark's holding (CUDA; None on CPU, where
        freed memory may stay resident)."""
        if not self.cuda:
            return None
        import torch

        return torch.cuda.memory_allocated() - self.base

    def reserved_peak_bytes(self) -> int | None:
        """The most the CUDA caching allocator reserved from the driver (None on CPU)."""
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_reserved()


def torch_allocator_peak(fn: Callable[[], object]) -> int | None:
    """Peak bytes held by torch's CPU allocator while ``fn()`` runs, from the
    profiler's memory timeline: the memory the work itself needs, where the process's
    RSS also counts what the C allocator kept after torch freed it. It reads a private
    torch API (``torch.profiler._memory_profiler``): None where that is missing or
    changed (not measured)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    try:
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a private API: any change means "not measured"
        return None
    return int(max(sum(row) for row in sizes))


# -- rounds, percentiles, other processes -----------------------------------------------------

def per_wall(samples: dict[str, list[Sample]], amount: float) -> dict[str, list[float]]:
    """Per case, ``amount`` per wall second of every run (e.g. tokens/s of each round)."""
    return {name: [s.per_wall(amount) for s in ss] for name, ss in samples.items()}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of ``a[i] / b[i]``: each round's two runs sit side by side
    in time (``interleaved``), so a drift in the machine's load cancels."""
    return statistics.median(x / y for x, y in zip(a, b))


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``xs`` by nearest rank: a value that was measured."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def process_cpu_s(pid: int) -> float | None:
    """CPU-seconds (user + system, every thread) a live process has used so far, from
    procfs; None when it is gone. Read before and after a stretch of load to get what a
    server spent on it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def concurrently(job: Callable[[object], Awaitable], items: list, concurrency: int) -> tuple[list, Sample]:
    """``await job(item)`` for every item, ``concurrency`` at a time: that many workers
    each take the next item as soon as their last is done, so the load stays at
    ``concurrency`` until the items run out. The results (in the order they finished)
    and the whole run's ``Sample`` (CPU-seconds: this process's, the load generator's own
    share of the machine)."""
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: list = []

    async def worker() -> None:
        while not queue.empty():
            results.append(await job(queue.get_nowait()))

    with Timer() as t:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, t.sample


def run_json(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd`` in a fresh process (a clean ``VmHWM`` and CUDA state) and return the
    JSON object on the last line of its stdout. Nothing polls it, so its own timings are
    undisturbed (``run_tree`` reads procfs every ``POLL_S``). Its stderr passes through;
    raises ``RuntimeError`` naming the command when it fails."""
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); its error is printed above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_has(flag: str) -> bool | None:
    """Whether the CPU lists ``flag`` (``avx2``, ``avx512_bf16``) in /proc/cpuinfo; None
    where there is no /proc/cpuinfo to say."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text(errors="ignore").splitlines():
        if line.startswith("flags"):
            return flag in line.split(":", 1)[1].split()
    return False
