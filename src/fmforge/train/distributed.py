"""Data parallelism applied from outside the model, torchtitan's way: the model
file stays single-device, and this module wraps it for ``torchrun``.

* ``ddp``: ``DistributedDataParallel``; every process holds the whole model and
  gradients are all-reduced (averaged) in the backward pass.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every transformer
  block and then on the root, so parameters, gradients and optimizer states are
  sharded across processes and gathered one block at a time. With bf16 the
  mixed-precision policy computes in bf16 and reduces gradients in fp32.

NCCL on CUDA, gloo on CPU. One process (no torchrun) needs none of this.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fmforge.launch import Launch, current_launch


@dataclass
class Parallel:
    """How this process takes part in training."""

    launch: Launch
    mode: str  # "none" | "ddp" | "fsdp"
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.launch.is_main

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def _grouped(self) -> bool:
        return self.mode != "none"

    def barrier(self) -> None:
        if self._grouped:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over processes (a logged loss)."""
        if not self._grouped:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a stop request, a failed load)."""
        if not self._grouped:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup_parallel(mode: str, device_name: str) -> Parallel:
    """Join the process group torchrun set up (when there is one) and pick this
    process's device: ``cuda:LOCAL_RANK`` on GPUs."""
    from fmforge.train.device import pick_device

    launch = current_launch()
    device = pick_device(device_name)
    # FSDP on one process (torchrun --nproc-per-node 1) is still FSDP: sharded
    # checkpoints and the same code path as many processes, e.g. to check a config.
    if not launch.distributed and not (mode == "fsdp" and launch.under_torchrun):
        return Parallel(launch, "none", device)
    if mode == "none":
        raise ValueError(
            f"launched with {launch.world_size} processes but train.parallel is none: set "
            "train.parallel=ddp or fsdp, or run one process"
        )
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return Parallel(launch, mode, device)


def wrap_model(model: torch.nn.Module, par: Parallel, dtype: str) -> torch.nn.Module:
    """The module the training step calls: the model itself, DDP around it, or the
    model sharded in place by FSDP2."""
    if par.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [par.device.index] if par.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if par.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if dtype == "bfloat16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                       reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP or ``torch.compile`` (FSDP2 shards in place)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def teardown(par: Parallel) -> None:
    if par.mode != "none" and dist.is_initialized():
        dist.destroy_process_group()
