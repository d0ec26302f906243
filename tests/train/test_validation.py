"""The validation loss the trainer logs (metrics.jsonl, TensorBoard, the report's
curve) estimates the loss on the whole held-out split, which the eval stage
scores: it must not be the first few batches of the val split, whose documents
may all come from one source. (The eval stage's own overall figure sums per-source
streams re-encoded from the val documents; this test scores the val token split
the trainer samples from, whole.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml

import torch

from fmforge.config import load_config
from fmforge.inference.loading import load_trained
from fmforge.model.scoring import score_tokens
from fmforge.pipeline import run_pipeline
from fmforge.rundir import read_metrics
from fmforge.tokenizer.tokens import open_tokens


def test_the_final_validation_loss_agrees_with_the_eval_stage(tmp_path, make_tiny_config):
    raw = make_tiny_config(tmp_path, train={"max_steps": 30, "eval_every": 15, "eval_batches": 2,
                                            "micro_batch_size": 8, "tensorboard": False,
                                            "dtype": "float32"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run, _ = run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    # A held-out split of two very different parts, as the demo's is (prose first,
    # then code): its first sixth is text like the training data, the rest random
    # ids that no model predicts better than chance.
    meta = json.loads((run.tokens / "meta.json").read_text())
    train = np.asarray(open_tokens(run, "train"))
    rng = np.random.default_rng(0)
    n = 32 * 96 + 1
    like_train = train[: n // 6]
    noise = rng.integers(1, meta["vocab_size"], n - len(like_train)).astype(meta["dtype"])
    val = np.concatenate([like_train, noise])
    shutil.rmtree(run.tokens / "val")
    (run.tokens / "val").mkdir()
    val.tofile(run.tokens / "val" / "00000.bin")
    meta["val_tokens"] = int(len(val))
    meta["files"]["val"] = [{"path": "val/00000.bin", "tokens": int(len(val))}]
    (run.tokens / "meta.json").write_text(json.dumps(meta))

    run_pipeline(cfg, stages=("train",))
    final = [r for r in read_metrics(run.metrics) if "val_loss" in r][-1]
    trained = load_trained(run, device="cpu")
    with torch.no_grad():  # every window of the whole split, as a full evaluation scores it
        whole = score_tokens(trained.model, val.astype(np.int64), trained.model.cfg.seq_len, 8,
                             torch.device("cpu")).to_dict()
    # 16 windows of 96 agree with all 96 within a few percent; the first 16
    # windows (the old validation) are all text like the training data.
    assert abs(final["val_loss"] - whole["loss"]) / whole["loss"] < 0.03, (final, whole["loss"])
