"""Run by test_meta_build.py under ``torchrun --nproc-per-node 2`` (gloo): builds
each model of a ``{name: model config}`` JSON the FSDP way (meta device,
``fully_shard``, ``materialize``) and checks, against a plain build in the same
process, that the weights are the same, that each process holds only its shard,
and that 10 training steps give the losses of one process with the same global
batch. Writes a JSON verdict per rank and model. One launch for all the models:
torchrun's start-up is most of a model's time."""

from __future__ import annotations

import json
import sys

import torch

from fmforge.config import ModelConfig
from fmforge.model.transformer import Transformer
from fmforge.train.distributed import build_sharded, setup_parallel, teardown


def main(out: str, models_json: str) -> None:
    torch.set_num_threads(1)
    par = setup_parallel("fsdp", "cpu")
    for name, model in json.loads(models_json).items():
        check(f"{out}.{name}", ModelConfig.model_validate(model), par)
    teardown(par)


def check(out: str, cfg: ModelConfig, par) -> None:

    def build() -> Transformer:
        torch.manual_seed(11)
        return Transformer(cfg)

    sharded = build_sharded(build, par, "float32")
    plain = build()
    result: dict = {"rank": par.rank, "mismatched": [], "local_numel": 0,
                    "tied": sharded.lm_head.weight is sharded.embed.weight}
    plain_params = dict(plain.named_parameters())
    for name, p in sharded.named_parameters():
        result["local_numel"] += p.to_local().numel()
        if not torch.equal(p.full_tensor(), plain_params[name].detach()):
            result["mismatched"].append(name)
    result["names"] = [n for n, _ in sharded.named_parameters()] == list(plain_params)
    result["rope"] = (torch.equal(sharded.rope_cos, plain.rope_cos)
                      and torch.equal(sharded.rope_sin, plain.rope_sin))
    result["total_numel"] = sum(p.numel() for p in plain.parameters())

    # 10 steps: each process half of a global batch of 4, against one process on all 4.
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, cfg.vocab_size, (4, cfg.seq_len + 1), generator=gen) for _ in range(10)]
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (sharded, plain)]
    half = slice(2 * par.rank, 2 * par.rank + 2)
    result["losses"], result["reference"] = [], []
    for batch in batches:
        for model, opt, rows, key in ((sharded, opts[0], half, "losses"),
                                      (plain, opts[1], slice(None), "reference")):
            loss = model(batch[rows, :-1], batch[rows, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = float(loss.detach())
            result[key].append(par.mean(value) if key == "losses" else value)
    with open(f"{out}.{par.rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
