"""A model built on the meta device and materialised (the FSDP path: no process
ever holds the whole model) has exactly the weights of a plain build with the
same seed; sharded over 2 processes it trains like one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmforge.config import ModelConfig
from fmforge.model.transformer import Transformer
from fmforge.train.distributed import materialize

CONFIGS = {
    "gqa-tied": dict(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=32),
    "mha-untied": dict(vocab_size=301, d_model=48, n_layers=3, n_heads=3, seq_len=16,
                       tie_embeddings=False),
    "mqa-untied": dict(vocab_size=97, d_model=64, n_layers=1, n_heads=4, n_kv_heads=1, seq_len=8,
                       tie_embeddings=False, init_std=0.05),
}


def _plain(cfg: ModelConfig, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg)


def _meta(cfg: ModelConfig, seed: int) -> Transformer:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    materialize(model, torch.device("cpu"))
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_meta_build_materialised_equals_a_plain_build(name):
    cfg = ModelConfig(**CONFIGS[name])
    plain = _plain(cfg, 5)
    after_plain = torch.get_rng_state()
    meta = _meta(cfg, 5)
    # The global generator is left where a plain build leaves it (data order,
    # dropout and anything drawn after the build agree too).
    assert torch.equal(torch.get_rng_state(), after_plain)
    a, b = plain.state_dict(), meta.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(plain.rope_cos, meta.rope_cos) and torch.equal(plain.rope_sin, meta.rope_sin)
    assert (meta.lm_head.weight is meta.embed.weight) == cfg.tie_embeddings
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain(tokens), meta(tokens))


def test_the_seed_decides_the_weights_and_each_parameter_its_own():
    cfg = ModelConfig(**CONFIGS["mha-untied"])
    a, b, c = _plain(cfg, 5), _plain(cfg, 5), _plain(cfg, 6)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embed.weight, c.embed.weight)
    # Same-shaped matrices of different names (and layers) are drawn independently.
    q0, q1 = a.blocks[0].attn.o_proj.weight, a.blocks[1].attn.o_proj.weight
    assert not torch.equal(q0, q1)
    # Independent of the order parameters are filled in.
    value = a.initial_value("blocks.2.mlp.gate_up_proj.weight", a.blocks[2].mlp.gate_up_proj.weight.shape)
    assert torch.equal(value, a.blocks[2].mlp.gate_up_proj.weight)


def test_initial_values_follow_the_documented_scheme():
    cfg = ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=4, seq_len=8, init_std=0.03,
                      tie_embeddings=False)
    model = _plain(cfg, 0)
    residual_std = 0.03 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        p = p.detach()
        if p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        want = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.03
        assert float(p.std()) == pytest.approx(want, rel=0.03), name
        assert abs(float(p.mean())) < want / 20, name


def test_loading_a_state_dict_into_a_meta_build_gives_the_same_model():
    """Inference and export build a model then load weights: the rotary tables,
    which are not saved, are right after ``to_empty`` + ``reset_buffers``."""
    cfg = ModelConfig(**CONFIGS["gqa-tied"])
    plain = _plain(cfg, 1)
    with torch.device("meta"):
        empty = Transformer(cfg)
    empty.to_empty(device="cpu")
    empty.tie_weights()
    empty.reset_buffers()
    empty.load_state_dict(plain.state_dict())
    tokens = torch.arange(cfg.seq_len)[None] % cfg.vocab_size
    assert torch.equal(plain(tokens), empty(tokens))


@pytest.fixture(scope="module")
def two_fsdp_processes(tmp_path_factory):
    """One torchrun of 2 processes checks every model of CONFIGS (meta_build_worker.py)."""
    worker = Path(__file__).with_name("meta_build_worker.py")
    out = tmp_path_factory.mktemp("meta") / "result"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(worker), str(out), json.dumps(CONFIGS)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mha-untied", "mqa-untied", "gqa-tied"])
def test_two_fsdp_processes_built_on_meta_hold_half_and_train_like_one(two_fsdp_processes, name):
    out = f"{two_fsdp_processes}.{name}"
    results = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    total = results[0]["total_numel"]
    assert sum(r["local_numel"] for r in results) == total
    for r in results:
        assert r["mismatched"] == [] and r["names"] and r["rope"], r
        assert r["tied"] == CONFIGS[name].get("tie_embeddings", True)
        # Each process holds its half (FSDP splits every parameter by rows).
        assert r["local_numel"] <= total / 2 + 2 * 1024, (r["local_numel"], total)
        assert len(r["losses"]) == 10
        for step, (loss, ref) in enumerate(zip(r["losses"], r["reference"])):
            assert loss == pytest.approx(ref, rel=1e-5), step
