"""Data parallelism applied from outside the model, torchtitan's way: the model
file stays single-device, and this module wraps it for ``torchrun``.

* ``ddp``: ``DistributedDataParallel``; every process holds the whole model and
  gradients are all-reduced (averaged) in the backward pass.
* ``hsdp``: FSDP2 on a 2-D device mesh (replicas × shards): each group of
  processes (by default a node) holds one sharded copy, and the groups are
  replicas of each other, so parameters are gathered over a node's fast links
  and only the gradients' all-reduce crosses nodes.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every transformer
  block and then on the root, so parameters, gradients and optimizer states are
  sharded across processes and gathered one block at a time. With bf16 the
  mixed-precision policy computes in bf16 and reduces gradients in fp32. The
  model is built on the meta device (no memory), sharded, and only then given
  memory: each process holds its shard of the weights, never the whole model
  (``materialize``), with exactly the weights a plain build has.

NCCL on CUDA, gloo on CPU. One process (no torchrun) needs none of this.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fmforge.config import ConfigError
from fmforge.launch import Launch, current_launch


@dataclass
class Parallel:
    """How this process takes part in training."""

    launch: Launch
    mode: str  # "none" | "ddp" | "fsdp" | "hsdp"
    device: torch.device
    replicas: int = 1  # hsdp: replica groups, each sharding the model over its processes

    @property
    def sharded(self) -> bool:
        """Parameters are DTensors sharded by FSDP2 (fsdp or hsdp)."""
        return self.mode in ("fsdp", "hsdp")

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


def setup_parallel(mode: str, device_name: str, replicate_degree: int | None = None) -> Parallel:
    """Join the process group torchrun set up (when there is one) and pick this
    process's device: ``cuda:LOCAL_RANK`` on GPUs."""
    from fmforge.train.device import DeviceError, pick_device

    launch = current_launch()
    device = pick_device(device_name)
    # FSDP on one process (torchrun --nproc-per-node 1) is still FSDP: sharded
    # checkpoints and the same code path as many processes, e.g. to check a config.
    if not launch.distributed and not (mode in ("fsdp", "hsdp") and launch.under_torchrun):
        return Parallel(launch, "none", device)
    if mode == "none":
        raise ConfigError(
            f"launched with {launch.world_size} processes but train.parallel is none: set "
            "train.parallel=ddp, fsdp or hsdp, or run one process"
        )
    replicas = hsdp_replicas(launch, replicate_degree) if mode == "hsdp" else 1
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DeviceError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return Parallel(launch, mode, device, replicas)


def hsdp_replicas(launch: Launch, replicate_degree: int | None) -> int:
    """The number of HSDP replica groups: the user's, or one per node."""
    replicas = replicate_degree or launch.nodes
    if launch.world_size % replicas:
        raise ConfigError(
            f"train.replicate_degree={replicas} does not divide the {launch.world_size} "
            "processes into equal groups: choose a divisor of the process count (the number "
            "of nodes shards within each node)")
    return replicas


def wrap_model(model: torch.nn.Module, par: Parallel, dtype: str) -> torch.nn.Module:
    """The module the training step calls: the model itself, DDP around it, or the
    model sharded in place by FSDP2."""
    if par.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [par.device.index] if par.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if par.sharded:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if par.mode == "hsdp":
            from torch.distributed.device_mesh import init_device_mesh

            # Dimension 0 replicates, dimension 1 shards: FSDP2's HSDP layout.
            kwargs["mesh"] = init_device_mesh(
                par.device.type, (par.replicas, par.world_size // par.replicas),
                mesh_dim_names=("replicate", "shard"))
        if dtype == "bfloat16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                       reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    return model


def build_sharded(build: Callable[[], torch.nn.Module], par: Parallel, dtype: str,
                  prepare: Callable[[torch.nn.Module], None] = lambda m: None) -> torch.nn.Module:
    """FSDP's (and HSDP's) model, built without ever holding all of it: ``build()`` runs on the
    meta device (shapes only), ``prepare`` adapts the bare model (activation
    checkpointing), ``fully_shard`` splits every parameter across processes, and
    then each process allocates and fills only its own shard."""
    with torch.device("meta"):
        model = build()
    prepare(model)
    model = wrap_model(model, par, dtype)
    materialize(model, par.device)
    return model


@torch.no_grad()
def materialize(model: torch.nn.Module, device: torch.device) -> None:
    """Give a model built on the meta device (sharded by FSDP2 or not) memory on
    ``device`` and its initial values: each parameter's full value comes from
    ``model.initial_value(name, shape)`` one at a time on the CPU, and this process
    keeps only its shard of it, so peak memory is this process's shard plus one
    full parameter. Non-persistent buffers (the rotary tables) are recomputed."""
    from torch.distributed.tensor import DTensor

    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives the head a parameter of its own
    for name, p in model.named_parameters():
        full = model.initial_value(name, p.shape)
        if isinstance(p, DTensor):
            local = p.to_local()
            piece = _local_piece(full, p.device_mesh, p.placements)
            if piece.shape != local.shape:  # a placement this function does not know
                raise RuntimeError(f"{name}: shard of shape {tuple(piece.shape)} computed for a "
                                   f"local tensor of {tuple(local.shape)} ({p.placements})")
            local.copy_(piece)
        else:
            p.copy_(full)
    model.reset_buffers()


def _local_piece(full: torch.Tensor, mesh, placements) -> torch.Tensor:
    """This process's piece of ``full`` under DTensor ``placements``: a ``Shard(d)``
    on mesh dimension i keeps chunk number coordinate[i] of ``torch.chunk`` along d
    (DTensor's and FSDP2's split, the last chunks possibly shorter or empty), a
    ``Replicate`` keeps everything. Computed locally: no communication."""
    from torch.distributed.tensor import Shard

    coordinate = mesh.get_coordinate()
    for i, placement in enumerate(placements):
        if isinstance(placement, Shard):
            d, n, c = placement.dim, mesh.size(i), coordinate[i]
            chunks = torch.chunk(full, n, dim=d)
            full = chunks[c] if c < len(chunks) else full.narrow(d, 0, 0)
        elif not placement.is_replicate():
            raise NotImplementedError(f"materialising a parameter placed as {placement}")
    return full


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP or ``torch.compile`` (FSDP2 shards in place)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def teardown(par: Parallel) -> None:
    if par.mode != "none" and dist.is_initialized():
        dist.destroy_process_group()
