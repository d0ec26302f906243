"""The fused output head and loss (model/head_loss.py) gives autograd's loss and
gradients, and sums the weight's gradient in float32 when the weight is bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmforge.model.head_loss import HeadCrossEntropy


def inputs(rows: int, d: int, vocab: int, seed: int, ignored: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=gen)
    weight = torch.randn(vocab, d, generator=gen) / d ** 0.5
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[torch.randperm(rows, generator=gen)[:ignored]] = -100
    return h, weight, targets


@pytest.mark.parametrize("chunk", [8, 64], ids=["chunks", "one-chunk"])
def test_loss_and_gradients_equal_autograd_through_plain_cross_entropy(chunk):
    """float32, 37 rows (not a multiple of the chunk), 5 ignored targets, the loss
    scaled by 3 before backward (backward scales what forward computed)."""
    h, weight, targets = inputs(37, 16, 50, seed=0, ignored=5)
    h1, w1 = h.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), weight.clone().requires_grad_()
    fused = HeadCrossEntropy.apply(h1, w1, targets, chunk)
    plain = F.cross_entropy(h2 @ w2.T, targets, ignore_index=-100)
    (3 * fused).backward()
    (3 * plain).backward()
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-6, rtol=1e-5)
    assert h1.grad[targets == -100].abs().sum() == 0  # an ignored row gets no gradient


def test_a_frozen_head_gets_no_gradient_and_all_ignored_is_zero():
    h, weight, targets = inputs(12, 8, 20, seed=1)
    h = h.requires_grad_()
    HeadCrossEntropy.apply(h, weight, targets, 5).backward()
    assert weight.grad is None and h.grad is not None
    loss = HeadCrossEntropy.apply(h, weight.requires_grad_(), torch.full((12,), -100), 5)
    loss.backward()
    assert loss.item() == 0 and weight.grad.abs().sum() == 0


def weight_grad_error(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                      autocast: bool) -> float:
    """Relative error (Frobenius) of the weight's gradient against float64 autograd
    on the same (bf16-rounded) values; the gradient must come back in bf16."""
    w = weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        HeadCrossEntropy.apply(h, w, targets, chunk).backward()
    assert w.grad.dtype == torch.bfloat16
    w64 = weight.double().requires_grad_()
    F.cross_entropy(h.double() @ w64.T, targets).backward()
    return float((w.grad.double() - w64.grad).norm() / w64.grad.norm())


@pytest.mark.parametrize("h_dtype,autocast", [(torch.float32, True), (torch.bfloat16, False)],
                         ids=["bf16-autocast", "fsdp-bf16-params"])
def test_a_bf16_weights_gradient_is_summed_in_float32(h_dtype, autocast):
    """A bf16 weight (FSDP's param_dtype under train.dtype=bfloat16, where the
    loop turns autocast off and h is bf16 too; or one under autocast) and 4096
    rows in 1024 chunks of 4. Summed in bf16, the late chunks' small
    contributions are lost to rounding (relative error 0.031 here); summed in
    float32 and cast once, what is left is the rounding of the bf16 products and
    of the final cast (0.002)."""
    h, weight, targets = inputs(4096, 32, 16, seed=2)
    h, weight = h.to(h_dtype), weight.to(torch.bfloat16)
    error = weight_grad_error(h, weight, targets, 4, autocast)
    assert error < 0.008, error
