"""Load a run's latest checkpoint and tokenizer for inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import yaml
from tokenizers import Tokenizer

from fmforge.config import config_from_dict
from fmforge.model.transformer import Transformer
from fmforge.rundir import RunDir
from fmforge.tokenizer.train import load_tokenizer
from fmforge.train.checkpoint import latest_checkpoint, load_checkpoint
from fmforge.train.device import pick_device


@dataclass
class TrainedModel:
    model: Transformer
    tokenizer: Tokenizer
    device: torch.device
    step: int
    eos_id: int


def load_trained(run: RunDir, device: str = "auto") -> TrainedModel:
    cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    ckpt = latest_checkpoint(run.checkpoints)
    if ckpt is None:
        raise FileNotFoundError(
            f"no complete checkpoint under {run.checkpoints}: run `fmforge train` first"
        )
    dev = pick_device(device)
    model = Transformer(cfg.resolved_model())
    state = load_checkpoint(ckpt, model)
    model.to(dev).eval()
    tok = load_tokenizer(run)
    return TrainedModel(model=model, tokenizer=tok, device=dev, step=int(state["step"]),
                        eos_id=tok.token_to_id(cfg.tokenizer.eos_token))
