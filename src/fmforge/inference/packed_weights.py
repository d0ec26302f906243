"""MKL-packed copies of a model's linear weights, for the matrix-vector products
of a decode step of one sequence on CPU.

A decode step of one sequence is a chain of matrix-vector products over every
weight. ``torch.ops.mkl._mkl_linear`` (a private op: what inductor's freezing
uses for float32 linears) runs the packed product for inputs of one row and is
plain ``F.linear`` for any other, so batched steps and prefills are unchanged.
Why a private op: on the AMD EPYC of issue 8, MKL's plain product ran at 5-7
GB/s against 23-26 packed, and a demo-model decode step's products took 3.3-3.7
ms plain against 2.3-2.9 packed (a quarter of the step). It is not a gain on
every CPU: on the Intel Xeon of issue 20 a whole decode step took the same time
either way (plain/packed 0.97-1.01x for the demo model, 0.98-1.02x at 100M
parameters; ``benchmarks/bench_packed_weights.py``). The cost: a second (packed)
copy of the linear weights. Where the op is missing, fails or gives a wrong
product (``PackedWeights.unavailable``), the engine uses the plain product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedWeights:
    """Packed copies of every bias-free ``nn.Linear`` weight of ``model``. A weight
    changed in place after packing (its ``_version`` moves) is packed again on its
    next use."""

    def __init__(self, model: nn.Module):
        self._packed: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is None:
                self._pack(module.weight)

    @staticmethod
    def unavailable(model: nn.Module) -> str | None:
        """Why packing cannot serve ``model`` here, or None when it can: float32
        weights on a CPU, and torch's private MKL ops present and giving the
        plain product on a small trial (they are not public API, so a torch
        build may lack them or break them)."""
        weight = next(model.parameters())
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return f"packing is for float32 weights on a CPU, not {weight.dtype} on {weight.device}"
        if not torch.backends.mkl.is_available():
            return "this torch is built without MKL"
        w = torch.arange(12, dtype=torch.float32).view(3, 4) / 7
        x = torch.ones(1, 4)
        try:
            got = torch.ops.mkl._mkl_linear(x, torch.ops.mkl._mkl_reorder_linear_weight(w, 1),
                                            w, None, 1)
        except (AttributeError, RuntimeError) as exc:  # op absent, or present and failing
            return f"torch.ops.mkl's packed linear is missing or failed in this torch build: {exc}"
        if not torch.allclose(got, F.linear(x, w)):
            return "torch.ops.mkl's packed linear gave a wrong product in this torch build"
        return None

    @staticmethod
    def supported(model: nn.Module) -> bool:
        return PackedWeights.unavailable(model) is None

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), 1)
        self._packed[id(weight)] = (weight, weight._version, packed)
        return packed

    def linear(self, x: torch.Tensor, module: nn.Module, add: torch.Tensor | None = None) -> torch.Tensor:
        """``module(x)`` (+ ``add``, a (d_out,) vector, when given) for x of one row."""
        entry = self._packed.get(id(getattr(module, "weight", None)))
        if entry is None or type(module) is not nn.Linear or x.numel() != x.shape[-1]:
            return module(x) if add is None else module(x) + add
        weight, version, packed = entry
        if weight is not module.weight or weight._version != version:
            packed = self._pack(module.weight)
        return torch.ops.mkl._mkl_linear(x, packed, module.weight, add, 1)
