"""The output head and the cross-entropy loss in one autograd function.

Why: the usual path materialises the (tokens, vocab) logits, their log-softmax
and a same-sized gradient: at a vocabulary of 8192 those passes over memory cost
more than a tenth of a small model's step on a CPU, and at a large vocabulary
they dominate the memory of a step. Here each chunk's softmax is turned into its
gradient in place and folded into the gradients of ``h`` and ``weight`` at once;
backward only scales them. Same FLOPs, same result (to float rounding) as
``F.cross_entropy(F.linear(h, weight), targets)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class HeadCrossEntropy(torch.autograd.Function):
    """mean cross_entropy(h @ weight.T, targets), ignoring targets of -100, with
    its gradients computed during the forward, ``chunk`` rows at a time.

    The weight's gradient is a sum over every chunk, so it is accumulated in
    float32 whatever the weight's dtype (bf16 under FSDP's mixed precision, where
    a bf16 sum would drop the small late contributions) and cast to the weight's
    dtype once, in backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[:2]  # a frozen head (LoRA) needs no grad_w
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        count = (targets != -100).sum()
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]
            logits = F.linear(hc, weight)  # bf16 under autocast, like lm_head's
            probs = torch.log_softmax(logits.float(), dim=-1)
            ignored = tc == -100
            rows = torch.arange(tc.shape[0], device=tc.device)
            label = tc.masked_fill(ignored, 0)
            total -= probs[rows, label].masked_fill(ignored, 0.0).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot(target); 0 where ignored.
            probs.exp_()
            probs[rows, label] -= 1.0
            probs.masked_fill_(ignored[:, None], 0.0)
            grad_logits = probs.to(logits.dtype)
            if need_h:
                grad_h[start:start + chunk] = grad_logits @ weight
            if need_w:
                grad_w += grad_logits.t() @ hc
        count = count.clamp(min=1)
        ctx.grads = grad_h, grad_w
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(count)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (count,) = ctx.saved_tensors
        grad_h, grad_w = ctx.grads
        del ctx.grads  # free them with the step, not with the graph
        scale = grad_loss / count
        return (None if grad_h is None else grad_h * scale,
                None if grad_w is None else (grad_w * scale).to(ctx.weight_dtype), None, None)
