"""The hardware catalogue (``hardware.yaml``), GPU detection and the measured CPU peak.

The one home of what a device can do; the trainer (for MFU) and the planner
(for cost) both read it.

A GPU's peak is its datasheet's dense bf16 tensor-core figure. A CPU has no such
figure worth trusting (it depends on the core count, the vector units, clocks and
the BLAS), so fmforge measures it once: the best of a few large fp32 matmuls
through torch, i.e. the rate our own training step could reach at 100% MFU. The
result is cached per (CPU model, thread count, torch version) under
``$FMFORGE_CACHE_DIR`` or ``~/.cache/fmforge/``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fmforge.errors import UserError


class HardwareError(UserError, ValueError):
    """An unknown device or an impossible price: says what to do instead."""

CPU = "cpu"
_FIELDS = (
    "name",
    "peak_bf16_tflops",
    "memory_gb",
    "interconnect",
    "interconnect_gbps",
    "price_per_hour",
    "spec_source",
    "price_source",
)


@dataclass(frozen=True)
class Hardware:
    key: str  # catalogue key, e.g. "h100-sxm"
    name: str
    peak_flops: float  # FLOP/s, dense bf16 (GPU) or measured fp32 matmul (CPU)
    memory_gb: float
    interconnect: str
    interconnect_gbps: float
    price_per_hour: float  # US$ per device-hour (catalogue value or the user's override)
    spec_source: str
    price_source: str

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def is_cpu(self) -> bool:
        return self.key == CPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=1)
def _raw_catalogue() -> dict[str, dict[str, Any]]:
    text = resources.files("fmforge").joinpath("hardware.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    for key, entry in raw.items():
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            raise HardwareError(f"hardware.yaml entry {key!r} lacks the keys {missing}")
    return raw


def known_hardware() -> list[str]:
    """Catalogue keys, GPUs first, in file order."""
    return list(_raw_catalogue())


def _normalise(key: str) -> str:
    return key.strip().lower().replace("_", "-").replace(" ", "-")


def get_hardware(key: str, price_per_hour: float | None = None, measure_cpu: bool = True,
                 cpu_dtype: str = "float32") -> Hardware:
    """The catalogue entry ``key`` (case-insensitive), priced at ``price_per_hour``
    when given. ``cpu`` measures (or reads the cached) matmul peak of this machine
    in ``cpu_dtype`` (a bf16 CPU run is compared with the bf16 peak)."""
    raw = _raw_catalogue()
    k = _normalise(key)
    if k not in raw:
        raise HardwareError(
            f"unknown GPU {key!r}; known: {', '.join(known_hardware())} "
            "(add an entry to fmforge/hardware.yaml to price another)"
        )
    if price_per_hour is not None:
        if isinstance(price_per_hour, bool) or not isinstance(price_per_hour, (int, float)):
            raise HardwareError(f"price per GPU-hour must be a number, got {price_per_hour!r}")
        if not math.isfinite(price_per_hour):
            raise HardwareError(f"price per GPU-hour must be a finite number, got {price_per_hour}")
        if price_per_hour < 0:
            raise HardwareError(f"price per GPU-hour must be >= 0, got {price_per_hour:g}")
    e = raw[k]
    if k == CPU:
        peak = measure_cpu_peak_flops(dtype=cpu_dtype) if measure_cpu else float("nan")
        mem = _machine_memory_gb()
        e = {**e, "spec_source": f"measured {cpu_dtype} torch.mm throughput of this machine, "
                                 "cached per CPU model, thread count and torch version"}
    else:
        peak = float(e["peak_bf16_tflops"]) * 1e12
        mem = float(e["memory_gb"])
    hw = Hardware(
        key=k,
        name=e["name"],
        peak_flops=peak,
        memory_gb=mem,
        interconnect=e["interconnect"],
        interconnect_gbps=float(e["interconnect_gbps"]),
        price_per_hour=float(e["price_per_hour"]),
        spec_source=e["spec_source"],
        price_source=e["price_source"],
    )
    if price_per_hour is not None:
        hw = replace(hw, price_per_hour=float(price_per_hour), price_source="user override")
    return hw


# ------------------------------------------------------------------ GPU detection

# Substrings of torch.cuda.get_device_name() -> catalogue key, most specific first.
_GPU_NAMES = (
    ("h200", "h200"),
    ("h100 pcie", "h100-pcie"),
    ("h100", "h100-sxm"),
    ("a100-sxm4-40gb", "a100-40gb"),
    ("a100-pcie-40gb", "a100-40gb"),
    ("a100", "a100-80gb"),
    ("a10g", "a10g"),
    ("l4", "l4"),
    ("4090", "rtx-4090"),
    ("mi300x", "mi300x"),
)


def hardware_key_for_device_name(device_name: str) -> str | None:
    """Map a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3') to a catalogue key."""
    n = device_name.lower()
    for sub, key in _GPU_NAMES:
        if sub in n:
            return key
    return None


def detect_gpu() -> str | None:
    """The catalogue key of the first visible CUDA device, or None."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    return hardware_key_for_device_name(torch.cuda.get_device_name(0))


# -------------------------------------------------------------------- CPU peak


def cache_dir() -> Path:
    return Path(os.environ.get("FMFORGE_CACHE_DIR") or Path.home() / ".cache" / "fmforge")


def _cpu_model() -> str:
    """The CPU's name, for the peak cache key: /proc/cpuinfo on Linux, else
    (macOS, Windows) what the platform module reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return float("nan")


def _benchmark_matmul(n: int = 1024, repeats: int = 5, budget_s: float = 3.0,
                      dtype: str = "float32") -> float:
    """Best FLOP/s of an n×n matmul (2n³ FLOPs) in ``dtype`` over a few timed repeats."""
    import torch

    a = torch.randn(n, n).to(getattr(torch, dtype))
    b = torch.randn(n, n).to(getattr(torch, dtype))
    torch.mm(a, b)  # warm-up: thread pool, BLAS dispatch
    best = 0.0
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 / dt)
        if time.perf_counter() - start > budget_s:
            break
    return best


# Load above one's own threads by more than this is other programs' work.
BUSY_MARGIN = 0.75


def other_cpu_load(threads: int) -> float | None:
    """The 1-minute load average when it exceeds ``threads`` (the caller's own)
    by more than ``BUSY_MARGIN``: other programs are using the cores. None on an
    idle machine, or where there is no load average (Windows)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    return load if load > threads + BUSY_MARGIN else None


def _busy(threads: int) -> bool:
    return other_cpu_load(threads) is not None


def measure_cpu_peak_flops(refresh: bool = False, dtype: str = "float32") -> float:
    """This machine's matmul peak in FLOP/s for ``dtype`` (float32 or bfloat16),
    measured once and cached.

    The cache key is the CPU model, torch's thread count, torch's version and the
    dtype, so a run with a different ``train.num_threads`` measures again.
    ``refresh`` re-measures.
    """
    import torch

    if dtype not in ("float32", "bfloat16"):
        raise HardwareError(f"CPU peak dtype must be float32 or bfloat16, got {dtype!r}")
    threads = torch.get_num_threads()
    key = f"{_cpu_model()}|threads={threads}|torch={torch.__version__}|{dtype}"
    path = cache_dir() / "cpu_peak.json"
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cache = {}  # a corrupt cache is re-measured and rewritten
    busy = _busy(threads)
    cached = cache.get(key) or {}
    # A peak measured while other programs used the cores is too low (seen here:
    # 47 GFLOP/s for 2 threads against 168 for 1), and every MFU computed from it
    # too high; it is measured again once the machine is idle, keeping the higher.
    if not refresh and cached.get("peak_flops", 0) > 0 and (not cached.get("busy") or busy):
        return float(cached["peak_flops"])
    # Best of many short repeats: on a shared or throttled machine a single timing
    # can be half the real rate, and a low peak would inflate every later MFU.
    peak = max(_benchmark_matmul(1024, repeats=30, budget_s=2.0, dtype=dtype),
               _benchmark_matmul(2048, repeats=8, budget_s=3.0, dtype=dtype))
    if not refresh and cached.get("busy"):
        peak = max(peak, float(cached.get("peak_flops", 0)))
    cache[key] = {"peak_flops": peak, "measured_at": time.time(), "busy": busy,
                  "method": f"best {dtype} torch.mm, n=1024/2048"}
    try:
        from fmforge.rundir import atomic_write_json

        atomic_write_json(path, cache)
    except OSError as exc:
        # An unwritable cache only costs a re-measure next time; say so once.
        import sys

        print(f"note: could not cache the CPU peak in {path} ({exc}); it will be "
              "measured again next time (set FMFORGE_CACHE_DIR to a writable folder)",
              file=sys.stderr)
    return peak


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice the fp32 rate. Cached:
    the trainer asks at every micro-step (through its autocast)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_peak_flops(device_type: str, dtype: str) -> float | None:
    """Peak FLOP/s of the device a run trains on, at its precision, for MFU: the
    catalogue's figure for a known GPU, the measured (cached) matmul peak on CPU,
    None for a device the catalogue does not know."""
    key = CPU if device_type == "cpu" else detect_gpu() if device_type == "cuda" else None
    if key is None:
        return None
    return get_hardware(key, cpu_dtype=dtype if dtype in ("float32", "bfloat16") else "float32").peak_flops


def peak_rss_bytes() -> int:
    """This process's peak resident set size, in bytes.

    Linux: ``VmHWM`` from /proc/self/status, the peak of this process image.
    Not getrusage's ``ru_maxrss`` there: it survives exec, so a process started
    by a large one (a benchmark worker, a test's subprocess) would report its
    parent's peak until it outgrew it. Elsewhere ``ru_maxrss`` (KiB on Linux and
    BSD, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            hwm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)
    except OSError:  # no /proc (macOS, BSD): getrusage below
        hwm = None
    if hwm is not None:
        return hwm
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024

