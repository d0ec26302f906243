"""Load a run's latest checkpoint and tokenizer for inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import yaml
from tokenizers import Tokenizer

from fmforge.config import ModelConfig, config_from_dict
from fmforge.model.transformer import Transformer
from fmforge.errors import UserError
from fmforge.rundir import ArtifactMissingError, RunDir
from fmforge.tokenizer.load import load_tokenizer, special_token_ids
from fmforge.train.checkpoint import (
    consolidate,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
)
from fmforge.train.device import pick_device


@dataclass
class TrainedModel:
    model: Transformer
    tokenizer: Tokenizer
    device: torch.device
    step: int
    eos_id: int


class StaleCheckpointError(UserError, ValueError):
    """The checkpoint was trained on tokens that no longer match the run's tokenizer."""


def load_trained(run: RunDir, device: str = "auto", step: int | None = None) -> TrainedModel:
    """The latest checkpoint (or that of ``step``) with the tokenizer it was trained
    with. Refuses a checkpoint whose token shards (hence tokenizer) have since been
    rebuilt."""
    cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    ckpt = latest_checkpoint(run.checkpoints)
    if ckpt is None:
        raise ArtifactMissingError(
            f"no complete checkpoint under {run.checkpoints}: run `fmforge train` first"
        )
    if step is not None:
        found = dict(list_checkpoints(run.checkpoints))
        if step not in found:
            raise ArtifactMissingError(
                f"no checkpoint of step {step} under {run.checkpoints}; there are: "
                f"{', '.join(str(s) for s in sorted(found))} (train.checkpoint_every and "
                "train.keep_checkpoints decide which steps `fmforge train` keeps)")
        ckpt = found[step]
    dev = pick_device(device)
    state = load_trainer_state(ckpt)
    tokens_record = run.stage_record("tokenize")
    trained_on = state.get("tokens_fingerprint")
    if trained_on is not None and (
        tokens_record is None or tokens_record.get("output", tokens_record["fingerprint"]) != trained_on
    ):
        raise StaleCheckpointError(
            f"{ckpt} was trained on tokens that have since been rebuilt or invalidated "
            f"(the tokenizer or data of {run.root} changed): run `fmforge run CONFIG` to retrain"
        )
    model_cfg = ModelConfig.model_validate(state["model"]) if "model" in state else cfg.resolved_model()
    model = Transformer(model_cfg)
    state = load_checkpoint(ckpt, model)
    model.to(dev).eval()
    tok = load_tokenizer(run, raw_text=True)  # a prompt is text, like the training data
    eos_id = special_token_ids(run.tokenizer, tok)["eos"]
    if eos_id is None:
        eos_id = tok.token_to_id(cfg.tokenizer.eos_token)
    return TrainedModel(model=model, tokenizer=tok, device=dev, step=int(state["step"]), eos_id=eos_id)


def consolidate_checkpoint(run: RunDir, step: int | None = None):
    """Write ``model.safetensors`` for a sharded (FSDP) checkpoint of ``run`` (the
    latest, or ``step``), so export tools and other programs read one file."""
    found = dict(list_checkpoints(run.checkpoints))
    if not found:
        raise ArtifactMissingError(f"no complete checkpoint under {run.checkpoints}: run `fmforge train` first")
    if step is not None and step not in found:
        raise ArtifactMissingError(f"no checkpoint of step {step} under {run.checkpoints}; "
                                   f"there are: {', '.join(str(s) for s in sorted(found))}")
    ckpt = found[step if step is not None else max(found)]
    state = load_trainer_state(ckpt)
    model = Transformer(ModelConfig.model_validate(state["model"]))
    return consolidate(ckpt, model)
