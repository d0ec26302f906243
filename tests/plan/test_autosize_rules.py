"""The sizing rule of `fmforge init` and `model: auto` (docs/planner.md, "Sizing a
model for a budget"), each step checked from outside: the family's shapes against
the documented table, the vocabulary against the documented values and a count by
hand, and the choice against a brute force over the family that uses only the one
parameter/FLOPs counter (``model.counting``) and the datasheet peak: a shape trains
D = peak × MFU × devices / (its FLOPs per token) × 0.95 × the budget's seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fmforge.config import ModelConfig, load_config
from fmforge.hardware import get_hardware
from fmforge.model.counting import count_params, from_model_config, train_flops_per_token
from fmforge.plan import autosize
from fmforge.plan.autosize import (
    WIDTHS,
    budget_optimum,
    family_shapes,
    resolve_auto_model,
    shape_for_width,
    size_model,
    size_model_measured,
    vocab_for,
)
from fmforge.plan.scaling import ScalingLaw

A10G = get_hardware("a10g")  # 125 TFLOP/s bf16
MFU = 0.3

# The family as docs/planner.md states it: L = max(2, round(d/64)) up to 1024, then
# 16 + (d - 1024)/128; heads of 32 dimensions up to 384, 64 up to 2048, 128 above
# (Python's round: 96/64 = 1.5 → 2, 160/64 = 2.5 → 2, 224/64 = 3.5 → 4, 288/64 = 4.5 → 4).
FAMILY = {64: (2, 2), 96: (2, 3), 128: (2, 4), 160: (2, 5), 192: (3, 6), 224: (4, 7), 256: (4, 8),
          288: (4, 9), 320: (5, 10), 384: (6, 12), 448: (7, 7), 512: (8, 8), 640: (10, 10), 768: (12, 12),
          896: (14, 14), 1024: (16, 16), 1280: (18, 20), 1536: (20, 24), 2048: (24, 32), 2560: (28, 20),
          3072: (32, 24), 4096: (40, 32), 5120: (48, 40), 6144: (56, 48), 8192: (72, 64)}

# Non-embedding parameters of the small shapes, by hand (tied embeddings, d_ff = 8/3·d up to a
# multiple of 64): per layer 4·d² (attention) + 3·d·f (SwiGLU) + 2·d (norms), plus the final norm.
#   d=64,  f=192: 2 × (16,384 + 36,864 + 128) + 64   = 106,816
#   d=96,  f=256: 2 × (36,864 + 73,728 + 192) + 96   = 221,664
#   d=128, f=384: 2 × (65,536 + 147,456 + 256) + 128 = 426,624
#   d=160, f=448: 2 × (102,400 + 215,040 + 320) + 160 = 635,680
#   d=192, f=512: 3 × (147,456 + 294,912 + 384) + 192 = 1,328,448
NON_EMBEDDING = {64: 106_816, 96: 221_664, 128: 426_624, 160: 635_680, 192: 1_328_448}


def test_the_family_is_the_documented_table():
    assert {d: shape_for_width(d) for d in WIDTHS} == FAMILY
    assert WIDTHS == tuple(sorted(WIDTHS))


def test_the_vocabulary_is_the_documented_power_of_two():
    # 2.5 × 106,816 / 64 = 4,172 → 4,096 (docs: "4,096 at d = 64"); 2.5 × 426,624 / 128 = 8,332 → 8,192
    assert vocab_for(64, 2, 2, 256) == 4096
    assert vocab_for(128, 2, 4, 256) == 8192
    # 2.5 × 221,664 / 96 = 5,772 → 4,096; 2.5 × 1,328,448 / 192 = 17,297 → 16,384
    assert vocab_for(96, 2, 3, 256) == 4096 and vocab_for(192, 3, 6, 256) == 16384
    # clamped to 512-65,536
    assert vocab_for(8192, 72, 64, 256) == 65_536
    assert vocab_for(2, 1, 1, 256) == 512  # 2.5 × 406 / 2 = 507 → 256, raised to 512
    for d, n in NON_EMBEDDING.items():
        layers, heads = FAMILY[d]
        arch = from_model_config(ModelConfig(vocab_size=4096, d_model=d, n_layers=layers, n_heads=heads))
        assert count_params(arch).non_embedding == n


def _brute_force(seconds: float, *, devices: int = 1, ratio: float = 20.0, vocab: int | None = None,
                 cap: float = math.inf) -> list[tuple[int, int, float]]:
    """(d_model, non-embedding params, tokens) of each shape of the family, from the counter alone."""
    out = []
    for d, (layers, heads) in FAMILY.items():
        v = vocab or vocab_for(d, layers, heads, 256)
        arch = from_model_config(ModelConfig(vocab_size=v, d_model=d, n_layers=layers, n_heads=heads, seq_len=256))
        tokens_per_s = A10G.peak_flops * MFU * devices / train_flops_per_token(arch)
        out.append((d, count_params(arch).non_embedding, min(cap, tokens_per_s * 0.95 * seconds)))
    return out


def _largest_fed(rows, ratio: float = 20.0):
    return [r for r in rows if r[2] >= ratio * r[1]][-1]


@pytest.mark.parametrize("minutes", [1, 30, 600])
def test_the_choice_is_the_largest_shape_that_gets_20_tokens_per_parameter(minutes):
    size = size_model(A10G, minutes * 60, mfu=MFU)
    d, n, tokens = _largest_fed(_brute_force(minutes * 60))
    assert (size.d_model, size.non_embedding_params) == (d, n)
    assert (size.n_layers, size.n_heads) == FAMILY[d]
    assert size.tokens == pytest.approx(tokens, rel=1e-9)
    assert size.tokens_per_s * 0.95 * minutes * 60 == pytest.approx(size.tokens, rel=1e-9)
    assert size.mfu == MFU and size.seconds == minutes * 60 and size.hardware == "a10g"
    assert size.rule == "compute-optimal, at least 20 tokens per non-embedding parameter"
    assert size.notes == []


def test_four_devices_train_four_times_the_tokens_and_a_fixed_vocabulary_is_kept():
    size = size_model(A10G, 1800, mfu=MFU, num_devices=4, vocab_size=1000)
    d, n, tokens = _largest_fed(_brute_force(1800, devices=4, vocab=1000))
    assert (size.d_model, size.vocab_size, size.num_devices) == (d, 1000, 4)
    assert size.tokens == pytest.approx(tokens, rel=1e-9)
    one = size_model(A10G, 1800, mfu=MFU, vocab_size=1000)
    assert one.d_model < size.d_model


def test_max_steps_caps_the_tokens_as_the_trainer_does():
    # 1,000 steps × 16 sequences × 256 tokens × 2 devices = 8,192,000 tokens: 20 per parameter allows
    # 409,600 non-embedding parameters: d=96 (221,664) yes, d=128 (426,624) no
    size = size_model(A10G, 3600, mfu=MFU, max_steps=1000, micro_batch=16, seq_len=256, num_devices=2)
    assert size.tokens == 8_192_000 and size.d_model == 96
    # one device: 4,096,000 tokens, at most 204,800 parameters: d=64
    one = size_model(A10G, 3600, mfu=MFU, max_steps=1000, micro_batch=16, seq_len=256)
    assert one.tokens == 4_096_000 and one.d_model == 64


def test_a_budget_too_small_for_any_shape_takes_the_smallest_and_says_so():
    # one step of 16 × 256 = 4,096 tokens: the smallest shape wants 20 × 106,816
    size = size_model(A10G, 3600, mfu=MFU, max_steps=1)
    assert size.d_model == 64 and size.tokens == 4096
    assert size.notes[0].startswith("the budget is too small for even the smallest shape at 20 tokens per")


def test_the_data_caps_the_model_at_what_four_passes_feed():
    # 2M tokens of data: 4 passes = 8M tokens = 20 × 400,000: d=96 (221,664) is fed, d=128 is not
    size = size_model(A10G, 3600, mfu=MFU, data_tokens=2e6)
    assert size.d_model == 96
    assert size.notes[0] == ("data-limited: 2,000,000 tokens of data feed a model of at most 400,000 non-embedding "
                             "parameters (20 tokens per parameter in 4 passes over the data); a bigger one would "
                             "need more data, not more time")
    assert any("repeat its data" in n for n in size.notes)
    # exactly 4 passes for d=96: 5 × 221,664 tokens of data; 20 × 221,664 = 4 × that, still fed
    edge = size_model(A10G, 3600, mfu=MFU, data_tokens=5 * 221_664)
    assert edge.d_model == 96
    # less data than even the smallest shape needs: the smallest, with the note
    starved = size_model(A10G, 3600, mfu=MFU, data_tokens=1e5)
    assert starved.d_model == 64 and any(n.startswith("data-limited") for n in starved.notes)
    # plenty of data changes nothing
    assert size_model(A10G, 3600, mfu=MFU, data_tokens=1e12).d_model == size_model(A10G, 3600, mfu=MFU).d_model


def test_a_one_variable_ladder_law_uses_its_own_ratio():
    ladder = {"law": {"E": 0.5, "A": 10.0, "alpha": 0.3, "tokens_per_param": 200.0}}
    size = size_model(A10G, 3600, mfu=MFU, ladder=ladder)
    d, n, _ = _largest_fed(_brute_force(3600), ratio=200.0)
    assert size.d_model == d
    assert size.rule == "this run's ladder rule, 200 tokens per non-embedding parameter"
    # with data too: 4 passes over 1e7 tokens feed 200,000 parameters at 200 per parameter: d=64
    small = size_model(A10G, 3600, mfu=MFU, ladder=ladder, data_tokens=1e7)
    assert small.d_model == 64 and "at most 200,000 non-embedding parameters" in small.notes[0]


LAW = {"E": 1.0, "A": 10.0, "alpha": 0.3, "B": 1000.0, "beta": 0.5}


def _law_loss(n: float, d: float) -> float:
    # Hoffmann et al. 2022's form, written out
    return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def test_a_two_variable_law_picks_the_lowest_predicted_loss():
    rows = _brute_force(600)
    best = min(rows, key=lambda r: _law_loss(r[1], r[2]))
    size = size_model(A10G, 600, mfu=MFU, ladder={"law": LAW})
    assert size.d_model == best[0] and size.rule == "the lowest loss by this run's ladder law"
    assert size.notes == []


def test_under_a_two_variable_law_tokens_past_four_passes_count_for_nothing():
    # 60 s of an A10G, 1e7 tokens of data: fed are shapes of at most 4e7 / 20 = 2M parameters (up to d=192).
    # Counting every token, d=160 (more tokens each) would look best; with tokens capped at 4e7, d=192.
    rows = [r for r in _brute_force(60) if 20 * r[1] <= 4e7]
    capped = min(rows, key=lambda r: _law_loss(r[1], min(r[2], 4e7)))
    uncapped = min(rows, key=lambda r: _law_loss(r[1], r[2]))
    assert (capped[0], uncapped[0]) == (192, 160)
    size = size_model(A10G, 60, mfu=MFU, ladder={"law": LAW}, data_tokens=1e7)
    assert size.d_model == 192
    assert size.notes[0].startswith("data-limited: 10,000,000 tokens of data feed a model of at most 2,000,000")


def test_the_measured_speed_replaces_the_default_mfu(monkeypatch):
    """The chosen shape is timed; the MFU it reached sizes the model again."""
    calls = []

    def measured(size, micro_batch, seq_len, device):
        # this machine reaches MFU 0.05 on every shape: tokens/s = 0.05 × peak / FLOPs per token
        calls.append((size.d_model, size.vocab_size, micro_batch, seq_len, device))
        arch = from_model_config(ModelConfig(vocab_size=size.vocab_size, d_model=size.d_model,
                                             n_layers=size.n_layers, n_heads=size.n_heads, seq_len=seq_len))
        return 0.05 * A10G.peak_flops / train_flops_per_token(arch)

    monkeypatch.setattr(autosize, "measure_tokens_per_s", measured)
    size = size_model_measured(A10G, 1800, vocab_size=1000)  # the trainer's defaults: 16 sequences of 256
    expected = size_model(A10G, 1800, vocab_size=1000, mfu=0.05)
    assert size.model_keys() == expected.model_keys()
    assert size.mfu == pytest.approx(0.05) and size.tokens == pytest.approx(expected.tokens)
    default = size_model(A10G, 1800, vocab_size=1000)
    assert default.mfu == 0.20 and default.d_model > size.d_model  # the default (0.20 under 100M) buys more
    # timed first the default's choice, then the new one (both with the fixed vocabulary, 16 × 256 tokens
    # a step as sized); the second agrees, so no third round
    assert calls == [(default.d_model, 1000, 16, 256, "cpu"), (size.d_model, 1000, 16, 256, "cpu")]
    assert any(n.startswith("speed measured on this machine") and "MFU 0.050 (the planner's default was 0.20)" in n
               for n in size.notes)


def test_a_measured_mfu_is_never_above_one(monkeypatch):
    monkeypatch.setattr(autosize, "measure_tokens_per_s", lambda size, *a: size.tokens_per_s * 1e6)
    assert size_model_measured(A10G, 60, rounds=1).mfu == 1.0


def test_the_speed_is_the_best_of_three_timed_steps_after_an_untimed_one(monkeypatch):
    import dataclasses
    import sys
    import time

    import torch

    # the warm-up step starts at 0 (its end is never read); then steps of 4, 2 and 3 s: the best is
    # 2 s for 2 × 16 tokens
    clock = iter([0.0, 9.0, 13.0, 13.0, 15.0, 15.0, 18.0])
    real = time.perf_counter

    def perf_counter():  # the fake clock for the function under test only (torch reads the clock too)
        return next(clock) if sys._getframe(1).f_globals["__name__"] == autosize.__name__ else real()

    monkeypatch.setattr(time, "perf_counter", perf_counter)
    from fmforge.model import transformer

    built, batches = [], []

    class Spy(transformer.Transformer):  # the model timed, and what it is fed
        def __init__(self, cfg):
            super().__init__(cfg)
            built.append(cfg)

        def forward(self, x, *args, **kw):
            batches.append((tuple(x.shape), tuple(args[0].shape) if args else None, torch.is_autocast_enabled("cpu")))
            return super().forward(x, *args, **kw)

    monkeypatch.setattr(transformer, "Transformer", Spy)
    size = size_model(A10G, 60, mfu=MFU, vocab_size=512, max_steps=1)
    assert autosize.measure_tokens_per_s(size, micro_batch=2, seq_len=16) == pytest.approx(2 * 16 / 2.0)
    # the shape sized was the shape timed, on micro-batches of 2 × 16 tokens with their 16 targets
    cfg = built[0]
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.seq_len) == (512, 64, 2, 2, 16)
    assert batches == [((2, 16), (2, 16), False)] * 4  # float32 (size_model's "bfloat16" is not autocast)
    # a run under autocast is timed under autocast
    clock = iter([0.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0])
    batches.clear()
    autosize.measure_tokens_per_s(dataclasses.replace(size, dtype="autocast"), micro_batch=2, seq_len=16)
    assert batches == [((2, 16), (2, 16), True)] * 4


def test_the_description_names_the_choice():
    size = size_model(A10G, 3600, mfu=MFU, max_steps=1000, micro_batch=16, seq_len=256, num_devices=2)
    text = size.describe()
    assert text.startswith("d_model 96, 2 layers, 3 heads, vocabulary 4,096: ")
    assert "planned on a10g (bf16, MFU 0.3) → 8,192,000 tokens in 60 min, 37 tokens per non-embedding parameter" \
        in text  # 8,192,000 / 221,664 = 37
    assert size_model(A10G, 60, mfu=MFU, dtype="float32").describe().count("(float32, MFU") == 1
    assert size_model(A10G, 60, mfu=MFU, dtype="autocast").describe().count("(bf16, MFU") == 1
    d = size.to_dict()
    assert d["tokens_per_param"] == pytest.approx(8_192_000 / size.params)
    assert size.model_keys() == {"d_model": 96, "n_layers": 2, "n_heads": 3, "vocab_size": 4096}


def test_the_family_for_a_budget_optimum_keeps_the_configs_choices():
    """Grouped-query attention, untied head and vocabulary of the config carry to every shape."""
    model = ModelConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, seq_len=128,
                        tie_embeddings=False, d_ff=999)
    shapes = {s.keys["d_model"]: s for s in family_shapes(model)}
    assert list(shapes) == list(WIDTHS)
    # d=256: 8 heads of 32, groups of 4 → 2 key/value heads; d=64: 2 heads, not divisible by 4 → plain MHA
    pairs = ModelConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, seq_len=128)
    assert {s.keys["d_model"]: s for s in family_shapes(pairs)}[256].non_embedding_params == count_params(
        from_model_config(pairs.model_copy(update={"n_layers": 4, "d_ff": None}))).non_embedding  # groups of 2
    for d, kv in ((256, 2), (64, None), (512, 2)):
        layers, heads = FAMILY[d]
        arch = from_model_config(ModelConfig(vocab_size=1000, d_model=d, n_layers=layers, n_heads=heads,
                                             n_kv_heads=kv, seq_len=128, tie_embeddings=False))
        s = shapes[d]
        assert (s.non_embedding_params, s.params) == (count_params(arch).non_embedding, count_params(arch).total)
        assert s.flops_per_token == train_flops_per_token(arch)
        assert s.keys == {"d_model": d, "n_layers": layers, "n_heads": heads}
    one_variable = ScalingLaw(E=0.9, A=12.0, alpha=0.3, tokens_per_param=20.0)
    n, f = shapes[256].non_embedding_params, shapes[256].flops_per_token
    opt = budget_optimum(one_variable, 20 * n * f, model)
    assert opt["non_embedding_params"] == pytest.approx(n, rel=0.01)


def _auto_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("name: auto\ndata:\n  sources: [{name: s, paths: ['*.txt']}]\nmodel: {auto: true}\n"
                    "train: {max_minutes: 1, device: cpu, dtype: float32}\nplan: {mfu: 0.3}\n" + extra)
    return path


def test_model_auto_is_decided_again_when_an_input_of_the_decision_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)  # no timing: a fixed peak
    path = _auto_config(tmp_path)
    first = resolve_auto_model(load_config(path))[1]
    assert resolve_auto_model(load_config(path))[2]  # the same inputs: reused
    for override in (["train.micro_batch_size=4"], ["model.seq_len=128"], ["plan.mfu=0.2"],
                     ["train.max_minutes=2"], ["train.dtype=bfloat16"], ["train.max_steps=500"]):
        resolve_auto_model(load_config(path))  # the record holds the base config's decision
        _, size, reused = resolve_auto_model(load_config(path, override))
        assert not reused, override
    # a vocabulary set by hand is kept, and is an input
    _, fixed, reused = resolve_auto_model(load_config(path, ["tokenizer.vocab_size=1000"]))
    assert not reused and fixed.vocab_size == 1000
    record = json.loads((tmp_path / "runs/auto/model_size.json").read_text())
    assert record["inputs"]["fixed_vocab"] == 1000 and record["size"]["vocab_size"] == 1000
    # a damaged record is decided again and rewritten
    (tmp_path / "runs/auto/model_size.json").write_text("{not json")
    _, again, reused = resolve_auto_model(load_config(path))
    assert not reused and again.model_keys() == first.model_keys()
    assert json.loads((tmp_path / "runs/auto/model_size.json").read_text())["size"]["d_model"] == first.d_model


def test_model_auto_sizes_the_step_as_the_trainer_takes_it(tmp_path, monkeypatch):
    """Gradient accumulation: a step of 4 micro-batches of 4 × 256 tokens is 4,096 tokens, so 1,100
    steps train 4,505,600 tokens, enough for d=96 (20 × 221,664 = 4,433,280); counted as one
    micro-batch a step (1,126,400 tokens) even the smallest shape would be short of its 20 per parameter."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    _, size, _ = resolve_auto_model(load_config(path, ["train.max_minutes=600", "train.max_steps=1100",
                                                       "train.micro_batch_size=4", "train.grad_accum_steps=4"]))
    assert size.tokens == 1100 * 4 * 4 * 256 and size.d_model == 96


def test_a_brought_tokenizer_fixes_the_vocabulary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    cfg = load_config(path, [f"tokenizer.path={tmp_path / 'tok'}"])
    _, size, _ = resolve_auto_model(cfg)
    assert size.vocab_size == cfg.tokenizer.vocab_size
    record = json.loads((tmp_path / "runs/auto/model_size.json").read_text())
    assert record["inputs"]["fixed_vocab"] == cfg.tokenizer.vocab_size


def test_data_that_arrives_after_a_checkpoint_keeps_the_model(tmp_path, monkeypatch):
    """Once anything was built for the model (here a checkpoint, no tokenizer of the run's own), new
    data does not change it: the note says how to size again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    _, blind, _ = resolve_auto_model(load_config(path, ["train.max_minutes=60", "train.max_steps=null"]))
    run = tmp_path / "runs" / "auto"
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "tokens").mkdir()
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 100_000}))
    _, kept, reused = resolve_auto_model(load_config(path, ["train.max_minutes=60", "train.max_steps=null"]))
    assert reused and kept.model_keys() == blind.model_keys()
    note = next(n for n in kept.notes if n.startswith("sized before the run's data (100,000 tokens"))
    assert "now picks d_model 64, 2 layers (106,816 non-embedding parameters)" in note
    assert "delete runs/auto/model_size.json and rerun from the tokenizer stage" in note
    # 100,000 tokens of data under the kept model's tokens: it says how often it would repeat them
    assert any(n.startswith("the model, trained for the whole budget, would repeat its data") for n in kept.notes)


def test_model_auto_sizes_on_the_peak_of_the_runs_precision_and_measures_without_an_mfu(tmp_path, monkeypatch):
    """A bf16 run on a CPU is sized on its bf16 matmul peak, a float32 one on its fp32 peak; the
    budget is train.max_minutes; without plan.mfu the speed is measured on the run's device."""
    monkeypatch.chdir(tmp_path)
    peaks = {"bfloat16": 2e11, "float32": 5e10}
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda refresh=False, dtype="float32": peaks[dtype])
    path = _auto_config(tmp_path)
    _, fp32, _ = resolve_auto_model(load_config(path, ["train.max_minutes=3"]))
    assert (fp32.peak_flops, fp32.dtype, fp32.seconds, fp32.mfu) == (5e10, "float32", 180, 0.3)
    _, bf16, _ = resolve_auto_model(load_config(path, ["train.max_minutes=3", "train.dtype=bfloat16"]))
    assert (bf16.peak_flops, bf16.dtype) == (2e11, "autocast")

    seen = {}

    def measured(hw, seconds, device="cpu", **kw):
        seen.update(device=device, seconds=seconds, **kw)
        return size_model(hw, seconds, mfu=0.01, **{k: v for k, v in kw.items() if k != "mfu"})

    monkeypatch.setattr(autosize, "size_model_measured", measured)
    cfg = load_config(tmp_path / "c.yaml", ["train.max_minutes=5"])
    cfg = cfg.model_copy(update={"plan": cfg.plan.model_copy(update={"mfu": None})})
    _, size, reused = resolve_auto_model(cfg)
    assert not reused and size.mfu == 0.01
    assert seen["device"] == "cpu" and seen["seconds"] == 300 and seen["dtype"] == "float32"
    assert seen["micro_batch"] == cfg.train.micro_batch_size and seen["seq_len"] == cfg.model.seq_len


def test_model_auto_follows_the_device_the_precision_the_ladder_and_the_threads(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    with pytest.raises(Exception, match="^resolve_auto_model needs a config with model: auto$"):
        resolve_auto_model(load_config(path).with_model_size(d_model=64, n_layers=2, n_heads=2, vocab_size=512))
    # the vocabulary is the family's own when nobody fixed it
    _, size, _ = resolve_auto_model(load_config(path))
    assert size.vocab_size == vocab_for(size.d_model, size.n_layers, size.n_heads, 256)
    # auto precision on a CPU without native bf16 is float32
    monkeypatch.setattr("fmforge.plan.estimate.cpu_has_native_bf16", lambda: False)
    _, auto, _ = resolve_auto_model(load_config(path, ["train.dtype=auto"]))
    assert auto.dtype == "float32"
    # the same config trained on a GPU is decided again, for that GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("fmforge.plan.estimate.detect_gpu", lambda: "a10g")
    _, gpu, reused = resolve_auto_model(load_config(path, ["train.device=cuda"]))
    assert not reused and gpu.hardware == "a10g"
    # a ladder fitted since decides again, by its law
    resolve_auto_model(load_config(path))
    _write_ladder = tmp_path / "runs" / "auto" / "ladder" / "ladder.json"
    _write_ladder.parent.mkdir(parents=True)
    _write_ladder.write_text(json.dumps({"law": {"E": 0.5, "A": 10.0, "alpha": 0.3, "tokens_per_param": 200.0}}))
    _, laddered, reused = resolve_auto_model(load_config(path))
    assert not reused and laddered.rule == "this run's ladder rule, 200 tokens per non-embedding parameter"
    # a thread count (here the one torch already uses, so that nothing else changes) is applied and recorded
    threads = torch.get_num_threads()
    _, _, reused = resolve_auto_model(load_config(path, [f"train.num_threads={threads}"]))
    assert not reused and torch.get_num_threads() == threads


def test_data_that_arrives_before_anything_is_built_resizes_at_the_speed_decided_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    over = ["train.max_minutes=60", "train.max_steps=null"]
    _, blind, _ = resolve_auto_model(load_config(path, over))
    run = tmp_path / "runs" / "auto"
    (run / "tokens").mkdir(parents=True)
    # plenty of data: the same model, reused (the log says "as decided before"), sized at the MFU given
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 1e12}))
    _, same, reused = resolve_auto_model(load_config(path, over))
    assert reused and same.model_keys() == blind.model_keys() and same.mfu == 0.3
    # little data: a smaller model, at the same MFU 0.3 (the default for a float32 CPU run would be 0.55)
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 500_000}))
    _, fed, reused = resolve_auto_model(load_config(path, over))
    cpu = get_hardware("cpu", cpu_dtype="float32")
    assert not reused and fed.mfu == 0.3
    assert fed.model_keys() == size_model(cpu, 3600, dtype="float32", mfu=0.3, data_tokens=500_000).model_keys()
    # under torchrun, a decision made before the data arrived is used as it is, not refused
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 2_000_000}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _, launched, reused = resolve_auto_model(load_config(path, over))
    assert reused and launched.model_keys() == fed.model_keys()


def test_the_step_from_a_global_batch_is_what_the_trainer_takes(tmp_path, monkeypatch):
    """train.global_batch_tokens = 16,384 with micro-batches of 4 × 256: 16 micro-batches a step in one
    process; 1,100 steps are 18,022,400 tokens, enough for d=160 (20 × 635,680 = 12,713,600) and not
    d=192 (26,568,960)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda **kw: 5e10)
    path = _auto_config(tmp_path)
    _, size, _ = resolve_auto_model(load_config(path, [
        "train.max_minutes=6000", "train.max_steps=1100", "train.micro_batch_size=4",
        "train.global_batch_tokens=16384"]))
    assert size.tokens == 1100 * 16_384 and size.d_model == 160


def test_the_speed_is_measured_on_the_gpu_that_will_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("fmforge.plan.estimate.detect_gpu", lambda: "a10g")
    seen = {}

    def measured(hw, seconds, device="cpu", **kw):
        seen.update(device=device, hardware=hw.key)
        return size_model(hw, seconds, mfu=0.01, **kw)

    monkeypatch.setattr(autosize, "size_model_measured", measured)
    cfg = load_config(_auto_config(tmp_path), ["train.device=cuda"])
    cfg = cfg.model_copy(update={"plan": cfg.plan.model_copy(update={"mfu": None})})
    resolve_auto_model(cfg)
    assert seen == {"device": "cuda", "hardware": "a10g"}


def test_the_measured_path_times_at_the_callers_context_and_sizes_twice_at_most(monkeypatch):
    """docs/planner.md: the shape is chosen again twice at most, however the speeds disagree."""
    calls, targets = [], iter([0.05, 0.2, 0.05, 0.2])

    def measured(size, micro_batch, seq_len, device):
        calls.append((size.d_model, micro_batch, seq_len))
        arch = from_model_config(ModelConfig(vocab_size=size.vocab_size, d_model=size.d_model,
                                             n_layers=size.n_layers, n_heads=size.n_heads, seq_len=seq_len))
        return next(targets) * A10G.peak_flops / train_flops_per_token(arch)  # MFU 0.05, then 0.2, ...

    monkeypatch.setattr(autosize, "measure_tokens_per_s", measured)
    size_model_measured(A10G, 1800, micro_batch=8, seq_len=128)
    assert len(calls) == 2 and calls[0][0] != calls[1][0]  # the choice moved each time: two rounds, no third
    assert [c[1:] for c in calls] == [(8, 128), (8, 128)]


def test_bad_budgets_and_unknown_peaks_are_named():
    from fmforge.plan.errors import PlanError

    with pytest.raises(PlanError, match=r"^budget in seconds must be > 0, got 0$"):
        size_model(A10G, 0)
    with pytest.raises(PlanError, match=r"^number of devices must be a whole number, got 1.5$"):
        size_model(A10G, 60, num_devices=1.5)
    with pytest.raises(PlanError, match=r"^number of devices must be > 0, got 0$"):
        size_model(A10G, 60, num_devices=0)
    with pytest.raises(PlanError, match=r"^cpu: peak FLOP/s unknown, cannot size a model for it$"):
        size_model(get_hardware("cpu", measure_cpu=False), 60)  # not measured: NaN


def test_a_float32_cpu_run_is_sized_at_the_float32_mfu():
    # docs/planner.md: a CPU runs at 0.55 of its fp32 peak in float32, 0.40 of its bf16 peak under autocast
    cpu = get_hardware("cpu", cpu_dtype="float32")  # tests/plan/conftest.py pins the peak
    assert size_model(cpu, 600, dtype="float32").mfu == 0.55
    assert size_model(cpu, 600, dtype="autocast").mfu == 0.40
