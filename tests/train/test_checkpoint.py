"""Save, load, identical logits; an incomplete checkpoint is never picked up."""

import torch

from fmforge.config import ModelConfig, TrainConfig
from fmforge.model.transformer import Transformer
from fmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fmforge.train.optim import build_optimizer


def _model(seed):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=200, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=2, seq_len=16))


def test_round_trip_gives_identical_logits(tmp_path):
    model = _model(0)
    opt = build_optimizer(model, TrainConfig(max_steps=10, warmup_steps=0))
    x = torch.randint(0, 200, (2, 16))
    model(x, x).backward()
    opt.step()
    save_checkpoint(tmp_path, 7, model, opt, {"tokens": 5}, keep=2)

    other = _model(1)
    other_opt = build_optimizer(other, TrainConfig(max_steps=10, warmup_steps=0))
    state = load_checkpoint(latest_checkpoint(tmp_path), other, other_opt)
    assert state["step"] == 7 and state["tokens"] == 5
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    # The tied head is still tied after loading.
    assert other.lm_head.weight.data_ptr() == other.embed.weight.data_ptr()
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                       other_opt.state_dict()["state"][0]["exp_avg"])


def test_keeps_only_the_newest_and_ignores_incomplete(tmp_path):
    model = _model(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, None, {}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-000002", "step-000003"]
    # A directory without trainer_state.json (killed mid-save) does not count.
    (tmp_path / "step-000009").mkdir()
    (tmp_path / "step-000009" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-000003"
