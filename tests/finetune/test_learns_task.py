"""The synthetic instruction task: answer with the words of the question reversed.

The base is a tiny Llama that fmforge itself fine-tuned in full to *repeat* the
words (so it has working attention, as a pretrained model has, but answers
this task wrongly); LoRA then teaches it to reverse them.
"""

from __future__ import annotations

import json
import random

import pytest

from fmforge.finetune.evaluate import evaluate_model
from fmforge.finetune.stage import run_finetune


@pytest.mark.slow
def test_lora_learns_to_reverse_the_words(tmp_path, ft):
    rng = random.Random(0)
    raw = ft.make_base(tmp_path / "random-base", init=0.02)
    copy = ft.write_jsonl(tmp_path / "copy.jsonl", [ft.copy_example(rng) for _ in range(3000)])
    train = ft.write_jsonl(tmp_path / "train.jsonl", [ft.reverse_example(rng) for _ in range(3000)])
    val = ft.write_jsonl(tmp_path / "val.jsonl", [ft.reverse_example(rng) for _ in range(40)])
    pre = ft.finetune_config(tmp_path / "pre", raw, [copy], [val], method="full", max_steps=300, lr=3e-3,
                             micro_batch_size=16, warmup_steps=10, log_every=50, eval_every=300)
    base = run_finetune(pre)["output"]

    before = evaluate_model(base, val, device="cpu", max_new_tokens=8)
    cfg = ft.finetune_config(tmp_path / "lora", base, [train], [val], max_steps=300, lr=3e-3,
                             micro_batch_size=16, warmup_steps=10, log_every=50, eval_every=300,
                             lora={"r": 16, "alpha": 32})
    summary = run_finetune(cfg)
    after = evaluate_model(summary["output"], val, device="cpu", max_new_tokens=8)
    print(json.dumps({"before": before, "after": after}, indent=1))
    assert before["accuracy"] < 0.1  # the base repeats; it cannot reverse
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.5
    assert summary["trainable_share"] < 0.35
