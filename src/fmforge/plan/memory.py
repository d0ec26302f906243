"""Memory per device for training, and how many devices a model needs.

Model states are bytes per parameter with AdamW (ZeRO, Rajbhandari et al. 2020,
§3.1); activations are every tensor autograd saves, counted per token and layer
the way Korthikanti et al. 2022 (§4) do, for fmforge's block (fused attention: no
s² term). docs/planner.md has the census, the bytes per precision, checkpointing,
and the check against measured peak RSS (within 25%). DDP holds all of it on every
device (plus its gradient buckets when N > 1); FSDP (ZeRO-3) 1/N of the states
plus all-gather buffers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fmforge.hardware import Hardware
from fmforge.model.counting import LOSS_CHUNK, Architecture, count_params
from fmforge.plan.errors import PlanError, require_positive

# usable memory: (capacity − reserved) × fraction on a GPU (CUDA context, NCCL
# buffers, fragmentation); a fraction of RAM on a CPU
GPU_RESERVED_GB = 1.0
GPU_USABLE_FRACTION = 0.92
CPU_USABLE_FRACTION = 0.80
GB = 1e9
MAX_GPUS = 1_000_000


@dataclass(frozen=True)
class StateBytes:
    weights: float
    grads: float
    optimizer: float

    @property
    def per_param(self) -> float:
        return self.weights + self.grads + self.optimizer


# bf16 mixed precision: 2 + 2 + 12 (fp32 master, m, v); fp32 and ``autocast``
# (fmforge's trainer: fp32 weights, bf16 matmuls): 4 + 4 + 8
STATE_BYTES = {"bfloat16": StateBytes(2, 2, 12), "autocast": StateBytes(4, 4, 8), "float32": StateBytes(4, 4, 8)}


def state_bytes_per_param(dtype: str) -> StateBytes:
    if dtype not in STATE_BYTES:
        raise PlanError(f"dtype must be one of {', '.join(STATE_BYTES)}, got {dtype!r}")
    return STATE_BYTES[dtype]


def _act_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def activation_bytes_per_token_layer(arch: Architecture, dtype: str) -> float:
    """Bytes saved for backward per token per transformer block (no checkpointing)."""
    state_bytes_per_param(dtype)  # raises on an unknown dtype
    h, f = arch.d_model, arch.ffn_dim
    if dtype == "autocast":
        # fp32 residual stream: each norm keeps its fp32 input and output (16h),
        # every projection its own bf16 cast of its input (q, k, v, gate, up:
        # 10h), SDPA q, k, v, out (8h), o_proj input (2h), SwiGLU (8f)
        return 36 * h + 8 * f
    p = _act_bytes(dtype)
    kv = arch.n_kv_heads * arch.head_dim
    # per norm its input, output and the projection's copy of it (6h for two);
    # the fused q/k/v output (h + 2kv), the rotated q and k (h + kv), the
    # o-projection input (h); gate|up, silu(gate) and their product (4f). The
    # tensors autograd saves for one block (saved_tensors_hooks): 12h + 4f with MHA.
    return p * (9 * h + 3 * kv + 4 * f) + (4 - p) * 2 * h


def head_bytes_per_token(arch: Architecture, dtype: str) -> float:
    """Final norm, its output and the gradient of that output, per token. fmforge's
    model fuses the output head with the loss (HeadCrossEntropy): no per-token
    vocabulary-sized tensor lives to the backward pass."""
    h = arch.d_model
    if dtype == "autocast":
        return 8 * h + 2 * h + 4 * h
    p = _act_bytes(dtype)
    return p * 3 * h + (4 - p) * h + 4 * h


def head_bytes_constant(arch: Architecture, dtype: str) -> float:
    """What the fused head and loss hold whatever the batch: one chunk of
    ``LOSS_CHUNK`` rows of logits, their fp32 log-softmax turned gradient, and the
    head's fp32 weight gradient, built during the forward pass."""
    v = arch.vocab_size
    logits = _act_bytes(dtype)
    return LOSS_CHUNK * v * (logits + 4 + logits) + 4 * v * arch.d_model


def activation_bytes(arch: Architecture, micro_batch: int, dtype: str, checkpointing: bool) -> float:
    """Peak activation bytes of one micro-batch of ``micro_batch`` sequences of arch.seq_len."""
    require_positive("micro-batch size", micro_batch)
    layer = activation_bytes_per_token_layer(arch, dtype)
    if checkpointing:
        # each block keeps its input (the residual stream: fp32 under autocast and in
        # float32, 16-bit in bfloat16); one block at a time is recomputed in full
        residual = 4 if dtype == "autocast" else _act_bytes(dtype)
        per_token = arch.n_layers * residual * arch.d_model + layer
    else:
        per_token = arch.n_layers * layer
    return (micro_batch * arch.seq_len * (per_token + head_bytes_per_token(arch, dtype))
            + head_bytes_constant(arch, dtype))


def usable_bytes(hw: Hardware) -> float:
    if hw.is_cpu:
        return hw.memory_gb * GB * CPU_USABLE_FRACTION
    return max(0.0, (hw.memory_gb - GPU_RESERVED_GB) * GB * GPU_USABLE_FRACTION)


@dataclass(frozen=True)
class MemoryEstimate:
    strategy: str  # "ddp" (single device: no sharding) or "fsdp"
    num_gpus: int
    micro_batch: int
    dtype: str
    checkpointing: bool
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    activations_checkpointed_gb: float
    activations_full_gb: float
    buffers_gb: float  # DDP gradient buckets or FSDP all-gather buffers
    total_gb: float
    usable_gb: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _buffers(arch: Architecture, params: int, sb: StateBytes, strategy: str, num_gpus: int) -> float:
    if num_gpus == 1:
        return 0.0
    if strategy == "ddp":
        return params * sb.grads
    # FSDP: the gathered weights of the unit being computed and of the prefetched
    # one, and the unsharded gradient of one unit before its reduce-scatter. The
    # root unit holds what no block holds: the embedding, the final norm and an
    # untied head (counted 0 when tied), gathered together.
    pc = count_params(arch)
    unit = max((pc.attention + pc.mlp) / arch.n_layers, pc.embedding + pc.lm_head)
    return 3 * unit * sb.weights


def _autocast_copy_bytes(arch: Architecture, dtype: str) -> float:
    """Under autocast, autograd keeps the bf16 copy of every matmul weight until
    backward uses it: memory that is neither state nor per-sequence activation."""
    return 2.0 * count_params(arch).matmul if dtype == "autocast" else 0.0


def estimate_memory(arch: Architecture, hw: Hardware, micro_batch: int, num_gpus: int = 1,
                    strategy: str = "fsdp", dtype: str = "bfloat16", checkpointing: bool = False) -> MemoryEstimate:
    require_positive("number of GPUs", num_gpus)
    if strategy not in ("ddp", "fsdp"):
        raise PlanError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if num_gpus == 1:
        strategy = "ddp"  # nothing to shard over
    sb = state_bytes_per_param(dtype)
    params = count_params(arch).total
    shard = num_gpus if strategy == "fsdp" else 1
    cast = _autocast_copy_bytes(arch, dtype) / shard  # sharded like the weights it copies
    act_full = activation_bytes(arch, micro_batch, dtype, False) + cast
    act_ckpt = activation_bytes(arch, micro_batch, dtype, True) + cast
    act = act_ckpt if checkpointing else act_full
    buf = _buffers(arch, params, sb, strategy, num_gpus)
    w, g, o = (params * x / shard for x in (sb.weights, sb.grads, sb.optimizer))
    # Gradients and activations do not peak together: backward frees each block's
    # activations as it fills in that block's gradients, and the trainer frees the
    # gradients (zero_grad(set_to_none=True)) before the next forward.
    total, usable = w + o + max(g, act) + buf, usable_bytes(hw)
    return MemoryEstimate(
        strategy=strategy, num_gpus=num_gpus, micro_batch=micro_batch, dtype=dtype, checkpointing=checkpointing,
        weights_gb=w / GB, grads_gb=g / GB, optimizer_gb=o / GB, activations_gb=act / GB,
        activations_checkpointed_gb=act_ckpt / GB, activations_full_gb=act_full / GB, buffers_gb=buf / GB,
        total_gb=total / GB, usable_gb=usable / GB, fits=total <= usable)


def max_micro_batch(arch: Architecture, hw: Hardware, num_gpus: int = 1, strategy: str = "fsdp",
                    dtype: str = "bfloat16", checkpointing: bool = False) -> int:
    """The largest micro-batch (sequences) that fits on each device; 0 if none does."""
    base = estimate_memory(arch, hw, 1, num_gpus, strategy, dtype, checkpointing)
    # what one more sequence adds (under autocast activations_gb also holds the bf16
    # weight copies, which do not grow with the batch)
    per_seq = activation_bytes(arch, 2, dtype, checkpointing) - activation_bytes(arch, 1, dtype, checkpointing)
    room = base.usable_gb * GB - base.total_gb * GB
    return max(0, 1 + int(room // per_seq)) if room >= 0 else 0


def min_gpus(arch: Architecture, hw: Hardware, micro_batch: int, dtype: str = "bfloat16",
             checkpointing: bool = False) -> tuple[int, str]:
    """The fewest devices of type ``hw`` that hold the training state plus one
    micro-batch's activations: one device if it fits unsharded, else FSDP over N.
    Raises PlanError, saying what would fit, when no number of devices does."""
    one = estimate_memory(arch, hw, micro_batch, 1, "ddp", dtype, checkpointing)
    if one.fits:
        return 1, "ddp"
    if hw.is_cpu:
        raise PlanError(
            f"training needs {one.total_gb:.1f} GB but this machine has {one.usable_gb:.1f} GB usable "
            f"({hw.memory_gb:.1f} GB RAM); {_what_fits(arch, hw, micro_batch, dtype, checkpointing)}")
    # Sharded states shrink as 1/N; activations and buffers do not.
    probe, fixed = _unsharded(arch, hw, micro_batch, dtype, checkpointing)
    cast = _autocast_copy_bytes(arch, dtype)  # sharded like the states
    states = count_params(arch).total * state_bytes_per_param(dtype).per_param + cast
    room = probe.usable_gb * GB - fixed
    n = math.ceil(states / room) if room > 0 else MAX_GPUS + 1
    if n > MAX_GPUS:
        raise PlanError(
            f"the model fits on no number of {hw.key} GPUs at micro-batch {micro_batch}: "
            f"activations ({probe.activations_gb - cast / 2 / GB:.1f} GB) and buffers ({probe.buffers_gb:.1f} GB) "
            f"alone exceed the {probe.usable_gb:.1f} GB usable per GPU, and FSDP does not shard "
            f"activations; {_what_fits(arch, hw, micro_batch, dtype, checkpointing)}")
    # n counts gradients beside the activations, so it fits; gradients and
    # activations do not peak together, so fewer may: the smallest that fits.
    n = max(n, 2)
    while not estimate_memory(arch, hw, micro_batch, n, "fsdp", dtype, checkpointing).fits:
        n += 1  # rounding; at most a step or two
    low = 2
    while low < n:
        mid = (low + n) // 2
        if estimate_memory(arch, hw, micro_batch, mid, "fsdp", dtype, checkpointing).fits:
            n = mid
        else:
            low = mid + 1
    return n, "fsdp"


def _unsharded(arch: Architecture, hw: Hardware, micro_batch: int, dtype: str,
               checkpointing: bool) -> tuple[MemoryEstimate, float]:
    """(the FSDP estimate on 2 devices, the bytes per device FSDP does not shard:
    activations and buffers, less the sharded half of autocast's weight copy)."""
    e = estimate_memory(arch, hw, micro_batch, 2, "fsdp", dtype, checkpointing)
    return e, (e.activations_gb + e.buffers_gb) * GB - _autocast_copy_bytes(arch, dtype) / 2


def _what_fits(arch: Architecture, hw: Hardware, micro_batch: int, dtype: str, checkpointing: bool) -> str:
    def leaves_room(micro_batch: int, checkpointing: bool) -> bool:
        """Whether what FSDP does not shard leaves room for the states."""
        e, fixed = _unsharded(arch, hw, micro_batch, dtype, checkpointing)
        return fixed < e.usable_gb * GB

    hints = []
    if not checkpointing and leaves_room(micro_batch, True):
        hints.append("turn on activation checkpointing (--checkpointing)")
    if micro_batch > 1 and leaves_room(1, checkpointing):
        hints.append("lower the micro-batch size to 1")
    if not hints and not checkpointing and micro_batch > 1 and leaves_room(1, True):
        hints.append("turn on activation checkpointing and lower the micro-batch size to 1")
    hints.append(f"use a shorter sequence than {arch.seq_len}")
    hints.append("shard the activations too (tensor, sequence or context parallelism, not modelled here)")
    if hw.is_cpu:
        hints.append("use a GPU")
    return "to fit: " + ", or ".join(hints)
