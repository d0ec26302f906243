"""Run by test_distributed.py under ``torchrun --nproc-per-node 2``: ``fmforge train``
with a NaN put into rank 1's gradient alone at step ``POISON_STEP`` (after DDP has
averaged the gradients, so no other process sees it). Before every step, each rank
writes a digest of its weights to ``DIGEST_OUT.<rank>.json``."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

from fmforge.cli import main

RANK = int(os.environ["RANK"])
POISON_STEP = int(os.environ["POISON_STEP"])
OUT = os.environ["DIGEST_OUT"]
_clip = torch.nn.utils.clip_grad_norm_
_digests: list[str] = []


def _clip_with_fault(parameters, max_norm, *args, **kwargs):
    """The trainer calls this once per step, after backward and before the guard."""
    params = list(parameters)
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().cpu().numpy().tobytes())
    _digests.append(digest.hexdigest())
    with open(f"{OUT}.{RANK}.json", "w") as f:
        json.dump(_digests, f)
    if RANK == 1 and len(_digests) == POISON_STEP:
        with torch.no_grad():
            params[0].grad.view(-1)[0] = float("nan")
    return _clip(params, max_norm, *args, **kwargs)


torch.nn.utils.clip_grad_norm_ = _clip_with_fault
sys.argv = ["fmforge", "train", *sys.argv[1:]]
main()
