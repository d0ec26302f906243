import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fmforge.config import ModelConfig
from fmforge.hardware import get_hardware
from fmforge.model.counting import from_hf_config, from_model_config
from fmforge.plan.command import PlanOptions, plan_command
from fmforge.plan.errors import PlanError
from fmforge.plan.memory import estimate_memory, max_micro_batch, min_gpus

LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096}
LLAMA2_70B = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
              "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
              "max_position_embeddings": 4096}


def test_zero_16_bytes_per_param_and_fsdp_sharding():
    arch = from_hf_config(LLAMA2_7B)
    a100 = get_hardware("a100-80gb")
    one = estimate_memory(arch, a100, 1, 1, "ddp", "bfloat16")
    assert one.weights_gb + one.grads_gb + one.optimizer_gb == pytest.approx(16 * 6_738_415_616 / 1e9)
    assert one.optimizer_gb == pytest.approx(12 * 6_738_415_616 / 1e9)  # fp32 master + m + v
    eight = estimate_memory(arch, a100, 1, 8, "fsdp", "bfloat16")
    assert eight.optimizer_gb == pytest.approx(one.optimizer_gb / 8)
    assert eight.activations_gb == one.activations_gb  # FSDP does not shard activations
    ckpt = estimate_memory(arch, a100, 1, 8, "fsdp", "bfloat16", checkpointing=True)
    assert ckpt.activations_gb < eight.activations_gb / 4


def test_min_gpus_and_max_micro_batch_agree_with_estimate():
    arch = from_hf_config(LLAMA2_7B)
    a100 = get_hardware("a100-80gb")
    n, strategy = min_gpus(arch, a100, micro_batch=1, checkpointing=True)
    assert strategy == "fsdp" and n >= 2  # 108 GB of state cannot sit on one 80 GB card
    assert estimate_memory(arch, a100, 1, n, "fsdp", checkpointing=True).fits
    assert not estimate_memory(arch, a100, 1, n - 1, "fsdp", checkpointing=True).fits or n == 2
    b = max_micro_batch(arch, a100, 8, "fsdp", checkpointing=True)
    assert b >= 1
    assert estimate_memory(arch, a100, b, 8, "fsdp", checkpointing=True).fits
    assert not estimate_memory(arch, a100, b + 1, 8, "fsdp", checkpointing=True).fits


def test_small_model_fits_on_one_gpu():
    arch = from_model_config(ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4))
    assert min_gpus(arch, get_hardware("l4"), micro_batch=16) == (1, "ddp")


def test_fits_on_no_number_of_gpus_says_what_would_fit():
    arch = from_hf_config({**LLAMA2_7B, "max_position_embeddings": 32768})
    with pytest.raises(PlanError, match="fits on no number of l4 GPUs") as exc:
        min_gpus(arch, get_hardware("l4"), micro_batch=8)
    assert "activation checkpointing" in str(exc.value) or "micro-batch" in str(exc.value)


@pytest.mark.parametrize("dtype", ["autocast", "bfloat16", "float32"])
def test_max_micro_batch_is_the_largest_that_fits(dtype):
    arch, hw = from_hf_config(LLAMA2_7B), get_hardware("a100-80gb")
    mmb = max_micro_batch(arch, hw, 8, "fsdp", dtype, True)
    assert mmb >= 1
    assert estimate_memory(arch, hw, mmb, 8, "fsdp", dtype, True).fits
    assert not estimate_memory(arch, hw, mmb + 1, 8, "fsdp", dtype, True).fits


@pytest.mark.parametrize("dtype", ["autocast", "bfloat16"])
def test_llama2_70b_min_gpus_is_the_fewest_that_fit(dtype):
    """68.98e9 params × 16 bytes = 1.10 TB of model state over 72.7 GB usable per H100:
    at least 16, and min_gpus is exactly where the estimate starts to fit."""
    arch, hw = from_hf_config(LLAMA2_70B), get_hardware("h100-sxm")
    n, strategy = min_gpus(arch, hw, 1, dtype, True)
    assert strategy == "fsdp" and n >= math.ceil(68_976_648_192 * 16 / 72.68e9) == 16
    assert estimate_memory(arch, hw, 1, n, "fsdp", dtype, True).fits
    assert not estimate_memory(arch, hw, 1, n - 1, "fsdp", dtype, True).fits


def test_fits_on_no_number_suggests_the_combination_that_works():
    out = plan_command(PlanOptions(hf_config=LLAMA2_7B, tokens=1e12, gpu="h100-sxm", num_gpus=8, seq_len=65536,
                                   micro_batch=64))
    assert out.data["min_gpus"] is None
    msg = next(w for w in out.data["warnings"] if "fits on no number" in w)
    assert "checkpointing and lower the micro-batch size to 1" in msg


# --------------------------------------------------------- estimate vs a real step

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from fmforge.config import ModelConfig
    from fmforge.model.transformer import Transformer

    def peak_kib():
        # VmHWM, the peak RSS of this process image. Not getrusage's ru_maxrss: that
        # survives exec, so a child of a large process (pytest after many tests)
        # starts with its parent's peak and the growth we measure is hidden under it.
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

    spec = json.loads(sys.argv[1])
    torch.manual_seed(0)
    cfg = ModelConfig(**spec["model"])
    b = spec["batch"]
    tok = torch.randint(0, cfg.vocab_size, (b, cfg.seq_len))
    tgt = torch.randint(0, cfg.vocab_size, (b, cfg.seq_len))
    # One tiny step first, so torch's one-time allocations (thread pools, kernels,
    # autograd engine) are in the baseline and not in the delta.
    tiny = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, seq_len=8))
    opt = torch.optim.AdamW(tiny.parameters())
    tiny(tok[:1, :8] % 64, tgt[:1, :8] % 64).backward(); opt.step()
    del tiny, opt
    before = peak_kib()
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        loss = model(tok, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = peak_kib()
    print(json.dumps({"delta_bytes": (after - before) * 1024}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status VmHWM and allocator behaviour checked on Linux")
def test_cpu_estimate_within_25_percent_of_measured_training_step():
    """The planner's fp32 CPU estimate against the peak of a real AdamW training step.

    Method: a fresh subprocess (so nothing earlier in the test session inflates the
    high-water mark) records its peak resident set size (VmHWM) after
    a warm-up on a tiny model, then builds a 30M-parameter Transformer and runs two
    forward+backward+AdamW steps (the second step is the steady state: Adam's moments
    already exist when the activations of the forward pass are alive), and records
    the peak again. The delta is everything the real step needed: weights,
    gradients, Adam moments, saved activations, backward temporaries and allocator
    overhead. It is independent of tracemalloc (which does not see torch's C++
    allocations). The model is big enough (~1 GB in play) that interpreter and
    allocator noise (tens of MB) stays small.
    """
    spec = {"model": {"vocab_size": 8192, "d_model": 512, "n_layers": 8, "n_heads": 8,
                      "seq_len": 256, "tie_embeddings": True}, "batch": 4}
    env = dict(os.environ, OMP_NUM_THREADS="2")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])["delta_bytes"]
    arch = from_model_config(ModelConfig(**spec["model"]))
    est = estimate_memory(arch, get_hardware("cpu", measure_cpu=False), spec["batch"], 1, "ddp", "float32")
    estimated = est.total_gb * 1e9
    assert measured > 0.5e9  # sanity: the measurement saw the model at all
    assert abs(estimated - measured) / measured < 0.25, (estimated, measured)
