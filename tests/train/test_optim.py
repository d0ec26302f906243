"""Learning-rate schedules, checked against values computed by hand."""

import math

import pytest

from fmforge.config import TrainConfig
from fmforge.train.optim import decay_start, lr_at


def test_cosine_warms_up_then_decays_to_min():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == 0.1
    assert lr_at(9, 100, cfg) == 1.0
    # halfway through the decay: 0.1 + 0.9 · (1 + cos(π/2)) / 2 = 0.55
    assert math.isclose(lr_at(55, 100, cfg), 0.55)
    assert math.isclose(lr_at(100, 100, cfg), 0.1)


def test_wsd_holds_then_decays_linearly_over_the_last_fraction():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0,
                      schedule="wsd", decay_fraction=0.2)
    assert decay_start(100, cfg) == 80
    assert [lr_at(s, 100, cfg) for s in (10, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    assert math.isclose(lr_at(90, 100, cfg), 0.5)
    assert math.isclose(lr_at(99, 100, cfg), 0.05)
    # Before its decay starts, a longer run follows exactly the same rates.
    assert all(lr_at(s, 100, cfg) == lr_at(s, 300, cfg) for s in range(80))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_warmup_does_not_depend_on_the_step_count(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=20, lr=2.0, schedule=schedule)
    assert [lr_at(s, 100, cfg) for s in range(20)] == [lr_at(s, 5000, cfg) for s in range(20)]
    assert lr_at(4, 100, cfg) == 2.0 * 5 / 20


def test_constant_stays_at_lr():
    cfg = TrainConfig(max_steps=100, warmup_steps=0, lr=0.3, schedule="constant")
    assert {lr_at(s, 100, cfg) for s in range(100)} == {0.3}


# --------------------------------------------------------------------------- the schedules
# against torch's own schedulers and hand-written tables


def _torch_warmup_then_cosine(lr, warmup, max_steps, min_lr):
    """The rate of steps 0..max_steps by torch's schedulers: LinearLR ramps
    (step+1)/warmup over the warmup steps, then CosineAnnealingLR (T_max the steps
    after warmup, eta_min the floor), each stepped as a trainer would."""
    import torch

    rates = []
    if warmup:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0,
                                                 total_iters=warmup - 1)
        for _ in range(warmup):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            warm.step()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_steps - warmup, eta_min=min_lr)
    for _ in range(max_steps - warmup + 1):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    return rates


@pytest.mark.parametrize("warmup,max_steps,ratio", [(4, 37, 0.1), (0, 25, 0.0), (1, 12, 0.3),
                                                    (10, 11, 0.1)])
def test_cosine_is_torchs_linear_warmup_then_cosine_annealing(warmup, max_steps, ratio):
    cfg = TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr=0.02, min_lr_ratio=ratio)
    reference = _torch_warmup_then_cosine(0.02, warmup, max_steps, 0.02 * ratio)
    ours = [lr_at(s, max_steps, cfg) for s in range(max_steps + 1)]
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-15)


def test_without_warmup_the_first_step_runs_at_the_full_rate():
    for schedule in ("cosine", "wsd", "constant"):
        cfg = TrainConfig(max_steps=10, warmup_steps=0, lr=0.5, schedule=schedule)
        assert lr_at(0, 10, cfg) == 0.5


def test_constant_warms_up_like_torchs_linear_lr_then_holds_past_the_end():
    cfg = TrainConfig(max_steps=8, warmup_steps=4, lr=1.0, schedule="constant")
    assert [lr_at(s, 8, cfg) for s in range(12)] == [0.25, 0.5, 0.75, 1.0] + [1.0] * 8
    assert decay_start(8, cfg) == 8  # nothing depends on the step count


def test_wsd_table_by_hand():
    # 10 steps, warmup 2, decay over the last 30% (3 steps) to 0.1·lr: the decay
    # begins at step 7 and falls by 0.3 a step, reaching 0.1 at step 10 (the end).
    cfg = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1, schedule="wsd",
                      decay_fraction=0.3)
    assert decay_start(10, cfg) == 7
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.4, 0.1]
    assert [lr_at(s, 10, cfg) for s in range(11)] == pytest.approx(expected, abs=1e-12)


def test_past_the_last_step_the_rate_stays_at_the_minimum():
    # (an extended run asks for steps past its old end; a rate must never turn
    # negative, nor climb back up the cosine)
    wsd = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1, schedule="wsd",
                      decay_fraction=0.3)
    cos = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    for cfg in (wsd, cos):
        assert [lr_at(s, 10, cfg) for s in (10, 11, 13, 16, 40)] == pytest.approx([0.1] * 5)


def test_wsd_decays_over_at_least_one_step_and_never_inside_warmup():
    # decay_fraction·max_steps rounds to 0 or 1 step: one step of decay, the last.
    for fraction in (0.01, 0.1, 0.14):
        cfg = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.0,
                          schedule="wsd", decay_fraction=fraction)
        assert decay_start(10, cfg) == 9
        assert [lr_at(s, 10, cfg) for s in (8, 9, 10)] == [1.0, 1.0, 0.0]
    # 0.16 · 10 = 1.6 rounds to 2 steps
    cfg = TrainConfig(max_steps=10, warmup_steps=2, lr=1.0, min_lr_ratio=0.0, schedule="wsd",
                      decay_fraction=0.16)
    assert decay_start(10, cfg) == 8 and lr_at(9, 10, cfg) == 0.5
    # half the run decaying, but warmup takes 8 of the 10 steps: the decay waits for it
    cfg = TrainConfig(max_steps=10, warmup_steps=8, lr=1.0, min_lr_ratio=0.0, schedule="wsd",
                      decay_fraction=0.5)
    assert decay_start(10, cfg) == 8
    assert [lr_at(s, 10, cfg) for s in (6, 7, 8, 9, 10)] == [0.875, 1.0, 1.0, 0.5, 0.0]


def test_decay_start_of_cosine_is_the_end_of_warmup():
    cfg = TrainConfig(max_steps=50, warmup_steps=7)
    assert decay_start(50, cfg) == 7 and decay_start(500, cfg) == 7


# --------------------------------------------------------------------------- AdamW's groups
# nanoGPT / torchtitan's rule: decay the matmul weights only, never norms, biases
# or embeddings (fmforge: a tied head is the embedding, so it is not decayed).


def _tiny_transformer(tie: bool):
    from fmforge.config import ModelConfig
    from fmforge.model.transformer import Transformer

    return Transformer(ModelConfig(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, seq_len=8,
                                   vocab_size=40, tie_embeddings=tie))


@pytest.mark.parametrize("tie", [True, False])
def test_only_the_matmul_weights_of_the_transformer_decay(tie):
    import torch

    from fmforge.train.optim import param_groups

    model = _tiny_transformer(tie)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.25)
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    decayed = sorted(names[id(p)] for p in decay["params"])
    kept = sorted(names[id(p)] for p in no_decay["params"])
    # Every projection of every block (and an untied head) decays; the norms and the
    # embedding do not.
    projections = sorted(n for n in names.values() if n.endswith("proj.weight"))
    assert len(projections) == 2 * 4  # qkv, o, gate_up, down in each of the 2 blocks
    assert decayed == sorted(projections + ([] if tie else ["lm_head.weight"]))
    assert kept == sorted(n for n in names.values() if "norm" in n or n == "embed.weight")
    assert "embed.weight" in kept
    # each parameter once (a tied head is the embedding's parameter)
    assert len(decayed) + len(kept) == len({id(p) for p in model.parameters()})
    assert all(torch.is_tensor(p) for p in decay["params"] + no_decay["params"])


def test_biases_norms_and_frozen_parameters_are_grouped_like_nanogpt():
    import torch
    import torch.nn as nn

    from fmforge.train.optim import param_groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.lin = nn.Linear(4, 4)  # weight decays, bias does not
            self.ln = nn.LayerNorm(4)  # neither
            self.conv = nn.Conv1d(4, 4, 3)  # 3-D weight decays, bias does not
            self.frozen = nn.Linear(4, 4, bias=False)
            self.frozen.weight.requires_grad_(False)

    net = Net()
    decay, no_decay = param_groups(net, 0.1)
    assert [id(p) for p in decay["params"]] == [id(net.lin.weight), id(net.conv.weight)]
    assert [id(p) for p in no_decay["params"]] == [id(net.emb.weight), id(net.lin.bias),
                                                  id(net.ln.weight), id(net.ln.bias), id(net.conv.bias)]
    assert not any(p is net.frozen.weight for g in (decay, no_decay) for p in g["params"])
    assert torch.is_tensor(net.frozen.weight)


def test_the_optimizer_is_torchs_adamw_with_the_configs_settings():
    import torch

    from fmforge.train.optim import build_optimizer

    torch.manual_seed(0)
    cfg = TrainConfig(lr=0.01, beta1=0.8, beta2=0.99, weight_decay=0.5)
    model = _tiny_transformer(tie=False)
    opt = build_optimizer(model, cfg)
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 0.01 and opt.defaults["betas"] == (0.8, 0.99)
    assert opt.defaults["eps"] == 1e-8
    assert opt.defaults["fused"] is True  # torch has a fused kernel for CPU tensors
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]

    # Two steps against torch's AdamW given the groups by hand (nanoGPT's split).
    reference = _tiny_transformer(tie=False)
    reference.load_state_dict(model.state_dict())
    decay = [p for n, p in reference.named_parameters() if n.endswith("weight") and p.dim() == 2
             and n != "embed.weight"]
    other = [p for n, p in reference.named_parameters() if not any(p is q for q in decay)]
    ref_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.5},
                                 {"params": other, "weight_decay": 0.0}],
                                lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    x = torch.randint(0, 40, (2, 8))
    for m, o in ((model, opt), (reference, ref_opt)):
        for _ in range(2):
            m(x, x).backward()
            o.step()
            o.zero_grad()
    for (n, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), n


def test_weight_decay_shrinks_decayed_weights_by_lr_times_wd_and_leaves_the_rest():
    # With a zero gradient AdamW's update is only the decoupled decay:
    # p ← p·(1 − lr·wd) = p·(1 − 0.1·0.5) = 0.95·p for decayed parameters.
    import torch
    import torch.nn as nn

    from fmforge.train.optim import build_optimizer

    lin, norm = nn.Linear(3, 3), nn.LayerNorm(3)
    model = nn.Sequential(lin, norm)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = list(model.parameters())
    assert torch.allclose(after[0], 0.95 * before[0])  # lin.weight
    for b, a in zip(before[1:], after[1:]):  # lin.bias, norm.weight, norm.bias
        assert torch.equal(a, b)


def test_parameters_on_a_device_without_a_fused_kernel_get_the_default_implementation():
    import torch

    from fmforge.train.optim import build_optimizer

    model = torch.nn.Linear(3, 3, device="meta")
    assert build_optimizer(model, TrainConfig()).defaults["fused"] is None
    frozen = torch.nn.Linear(3, 3)
    frozen.weight.requires_grad_(False)
    opt = build_optimizer(frozen, TrainConfig())
    assert [len(g["params"]) for g in opt.param_groups] == [0, 1]  # only the bias
    assert opt.defaults["fused"] is True


@pytest.mark.gpu
def test_parameters_on_cuda_take_the_fused_kernel_too():
    import torch

    from fmforge.train.optim import build_optimizer

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = torch.nn.Linear(3, 3, device="cuda")
    assert build_optimizer(model, TrainConfig()).defaults["fused"] is True
