"""The device catalogue and the measured CPU peak (fmforge.hardware)."""

from types import SimpleNamespace

import pytest

from fmforge import hardware as hw_mod
from fmforge.hardware import HardwareError, get_hardware, known_hardware


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMFORGE_CACHE_DIR", str(tmp_path / "cache"))


def test_unknown_gpu_lists_known_ones():
    with pytest.raises(HardwareError) as exc:
        get_hardware("v100")
    for key in ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "a10g", "rtx-4090", "mi300x"):
        assert key in str(exc.value) and key in known_hardware()


def test_gpu_names_are_case_and_separator_insensitive():
    assert get_hardware("H100_SXM").key == "h100-sxm"


def test_datasheet_peaks():
    # dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s
    for key, tflops in (("a100-80gb", 312), ("h100-sxm", 989), ("l4", 121)):
        assert get_hardware(key).peak_flops == pytest.approx(tflops * 1e12, rel=0.01)


def test_cpu_peak_is_measured_once_per_dtype_and_cached(monkeypatch, tmp_path):
    calls = []

    def fake(n=1024, repeats=5, budget_s=3.0, dtype="float32"):
        calls.append(dtype)
        return 1e11 if dtype == "float32" else 3e11

    monkeypatch.setattr(hw_mod, "_benchmark_matmul", fake)
    monkeypatch.setattr(hw_mod.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    assert hw_mod.measure_cpu_peak_flops() == 1e11
    first = len(calls)
    assert hw_mod.measure_cpu_peak_flops() == 1e11 and len(calls) == first  # read from the cache
    assert hw_mod.measure_cpu_peak_flops(dtype="bfloat16") == 3e11 and len(calls) > first
    assert (tmp_path / "cache" / "cpu_peak.json").is_file()


def test_a_peak_measured_on_a_busy_machine_is_measured_again_once_it_is_idle(monkeypatch, tmp_path):
    """Other programs on the cores make the matmuls slow: a peak measured then is
    too low, and every MFU computed from it too high (an idle run logged 2.9)."""
    rates = iter([2e10, 2e10, 9e10, 9e10])  # the 1024 and 2048 timings of two measurements
    monkeypatch.setattr(hw_mod, "_benchmark_matmul", lambda *a, **k: next(rates))
    monkeypatch.setattr(hw_mod.os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    assert hw_mod.measure_cpu_peak_flops() == 2e10  # busy: the best it can do now
    assert hw_mod.measure_cpu_peak_flops() == 2e10  # still busy: no new measurement
    monkeypatch.setattr(hw_mod.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert hw_mod.measure_cpu_peak_flops() == 9e10  # idle now: measured again
    assert hw_mod.measure_cpu_peak_flops() == 9e10  # and kept (the timings are used up)


def test_cpu_benchmark_counts_two_n_cubed_flops_per_matmul(monkeypatch):
    """The measured rate is 2·n³ FLOPs per torch.mm divided by the time it took."""
    ticks = iter(range(1000))  # a clock that advances one "second" per reading: every mm takes 1 s
    monkeypatch.setattr(hw_mod, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    assert hw_mod._benchmark_matmul(64, repeats=2) == 2 * 64**3
