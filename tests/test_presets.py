"""The presets in configs/: they load, they run (shrunk) through the engine and the
planner, their data placeholders stop the data stage with what to write there, the
Llama-shaped ones have the published parameter counts, and docs/training.md holds
the planner's table of them as generated."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

from fmforge.config import load_config
from fmforge.data.problems import UnknownPlaceholderError
from fmforge.data.stage import list_all_sources
from fmforge.model.counting import count_parameters
from fmforge.model.transformer import Transformer
from fmforge.pipeline import run_pipeline
from fmforge.plan.command import PlanOptions, plan_command
from fmforge.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PRESETS = ("gpt2-124m", "gpt2-350m", "llama-1b", "llama-8b")


def preset(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def test_the_presets_are_the_ones_in_configs():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(("demo", *PRESETS))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_is_set_for_h100s(name):
    cfg = load_config(preset(name))
    t = cfg.train
    assert cfg.name == name
    assert (t.device, t.dtype, t.compile, t.schedule) == ("cuda", "bfloat16", True, "wsd")
    assert t.parallel in ("ddp", "fsdp")
    assert (cfg.plan.gpu, cfg.plan.num_gpus) == ("h100-sxm", 8)
    # The comments promise the same global batch, so the same run, on 8 to 64 GPUs.
    seq = cfg.model.seq_len
    for gpus in (8, 16, 32, 64):
        assert t.tokens_per_step(seq, gpus) == t.global_batch_tokens
    assert cfg.vocab_size >= cfg.tokenizer.vocab_size


@pytest.mark.parametrize("name", PRESETS)
def test_preset_fits_8_h100_as_configured_and_the_8b_needs_its_checkpointing(name):
    cfg = load_config(preset(name))
    strategy, ckpt = cfg.train.parallel, cfg.train.activation_checkpointing
    plan = plan_command(PlanOptions(config=preset(name), gpu="h100-sxm", num_gpus=8, strategy=strategy,
                                    checkpointing=ckpt)).data
    assert plan["memory"]["fits"], plan["warnings"]
    assert plan["dtype"] == "autocast"  # bf16 as the trainer does it: autocast over fp32 weights
    if ckpt:  # activation checkpointing costs a third more compute: it must be needed
        without = plan_command(PlanOptions(config=preset(name), gpu="h100-sxm", num_gpus=8,
                                           strategy=strategy, checkpointing=False)).data
        assert not without["memory"]["fits"]


@pytest.mark.parametrize("name", PRESETS)
def test_unfilled_data_placeholder_stops_the_data_stage_saying_what_to_write(name):
    cfg = load_config(preset(name))
    with pytest.raises(UnknownPlaceholderError) as e:
        list_all_sources(cfg)
    msg = str(e.value)
    first = cfg.data.sources[0]
    assert f"source {first.name!r}" in msg and "{your_corpus}" in msg and first.paths[0] in msg
    assert "write the location of your files in its place" in msg


@pytest.mark.parametrize("name, published", [
    ("llama-8b", 8_030_261_248),  # Meta-Llama-3-8B
    ("llama-1b", 1_235_814_400),  # Llama-3.2-1B
])
def test_llama_presets_have_the_published_parameter_count(name, published):
    model_cfg = load_config(preset(name)).resolved_model()
    with torch.device("meta"):
        model = Transformer(model_cfg)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == published
    assert count_parameters(model_cfg).total == published


# --------------------------------------------------------- two steps, shrunk


def write_corpus(root: Path) -> dict[str, str]:
    """{your_corpus}: JSONL prose; {your_code}: Python files. Returns the fill-ins."""
    prose, code = root / "corpus", root / "code"
    prose.mkdir(parents=True)
    code.mkdir(parents=True)
    words = "the model reads a page of text and learns which word comes next in it".split()
    with open(prose / "part-0.jsonl", "w") as f:
        for i in range(40):
            text = ". ".join(" ".join(words[(i + j) % len(words):] + words[:(i + j) % len(words)])
                             for j in range(6))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")
    for i in range(12):
        body = "\n".join(f"def step_{i}_{j}(total, count):\n    return total + count * {j}\n" for j in range(6))
        (code / f"mod{i}.py").write_text(body)
    return {"{your_corpus}": str(prose), "{your_code}": str(code)}


def shrunk(name: str, tmp_path: Path) -> list[str]:
    """Overrides that keep a preset's structure (attention grouping, tying, RoPE
    base, parallelism, checkpointing, schedule, a global batch in tokens) at a
    size two CPU steps can afford."""
    cfg = load_config(preset(name))
    m = cfg.model
    fill = write_corpus(tmp_path)
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
        f"model.n_kv_heads={4 * m.kv_heads // m.n_heads}", "model.d_ff=128", "model.seq_len=32",
        "model.vocab_size=320", "tokenizer.vocab_size=300", "tokenizer.min_frequency=1",
        "train.device=cpu", "train.dtype=float32", "train.compile=false", "train.num_threads=1",
        "train.micro_batch_size=2", "train.global_batch_tokens=128",  # 2 micro-batches accumulated
        "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=2",
        "train.eval_batches=1", "train.checkpoint_every=2", "train.tensorboard=false",
        "data.min_chars=16", "data.val_fraction=0.1",
    ]
    for i, source in enumerate(cfg.data.sources):
        paths = [p for p in source.paths]
        for placeholder, value in fill.items():
            paths = [p.replace(placeholder, value) for p in paths]
        overrides.append(f"data.sources.{i}.paths={json.dumps(paths)}")
    return overrides


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shrunk_trains_two_steps_on_cpu_and_plans(name, tmp_path):
    overrides = shrunk(name, tmp_path)
    cfg = load_config(preset(name), overrides)
    full = load_config(preset(name))
    assert (cfg.model.tie_embeddings, cfg.model.rope_theta) == (full.model.tie_embeddings, full.model.rope_theta)
    assert cfg.model.n_heads // cfg.model.kv_heads == full.model.n_heads // full.model.kv_heads

    run, _ = run_pipeline(cfg, stages=("data", "tokenizer", "tokenize", "train"))

    steps = [r for r in read_metrics(run.root / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps)
    # Untrained, the loss is about ln(vocabulary): the model saw the shrunk config.
    assert abs(steps[0]["loss"] - math.log(320)) < 1.0
    assert (run.root / "checkpoints" / "step-000002").is_dir()

    plan = plan_command(PlanOptions(config=preset(name), overrides=overrides, gpu="h100-sxm", num_gpus=1)).data
    assert plan["tokens"] == 2 * 128
    assert plan["params"] == count_parameters(cfg.resolved_model()).total


# ------------------------------------------------------------ the docs' table


def test_the_docs_table_is_the_one_the_planner_generates_now():
    spec = importlib.util.spec_from_file_location("preset_table", ROOT / "tools" / "preset_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    docs = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    shown = re.search(re.escape(tool.START) + r"\n(.*)\n" + re.escape(tool.END), docs, re.S)
    assert shown is not None, "docs/training.md lost the preset-table markers"
    assert shown.group(1) == tool.generate(), f"the table is stale: run {tool.COMMAND}"


def test_plan_of_a_config_uses_its_own_checkpointing_and_parallelism():
    """`fmforge plan CONFIG` prices the run the config describes: the 8B preset
    trains with FSDP and activation checkpointing, and with them it fits 8 x H100.
    The flags still override the config."""
    import json as _json
    import os as _os
    import subprocess as _sp
    import sys as _sys

    env = {**_os.environ, "FMFORGE_NO_PROGRESS": "1"}

    def plan(*extra):
        done = _sp.run([_sys.executable, "-m", "fmforge", "plan", str(CONFIGS / "llama-8b.yaml"), "--json", *extra],
                       capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return _json.loads(done.stdout)["memory"]

    as_configured = plan()
    assert as_configured["strategy"] == "fsdp" and as_configured["checkpointing"] is True
    assert as_configured["fits"]
    without = plan("--no-checkpointing")
    assert without["checkpointing"] is False and not without["fits"]
