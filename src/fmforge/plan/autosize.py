"""The model a time budget buys on a given machine: width, depth, heads and
vocabulary. One rule, used by ``fmforge init`` and by ``model: auto``.

The rule (docs/planner.md, "Sizing a model for a budget"):

1. A family of shapes, one per width d: depth L = max(2, round(d/64)) up to
   d = 1024, then 16 + (d - 1024)/128; heads of 32 dimensions up to d = 384, of
   64 up to 2048, of 128 above; the vocabulary is the largest power of two whose
   embedding (V·d) is no bigger than ``EMBEDDING_SHARE`` (2.5) times the rest of the
   model (clamped to 512-65,536),
   unless the vocabulary is fixed (a brought tokenizer, or one set by hand).
2. Each shape's speed is the planner's: ``make_plan``'s tokens/s on the hardware
   (on a CPU its measured matmul peak) at an MFU, so the tokens it trains in the
   budget are D = tokens/s × usable seconds. On the machine that will train, the
   MFU is measured: the chosen shape trains a few steps, the MFU they reach
   replaces the planner's default, and the shape is chosen again
   (``size_model_measured``); for named hardware (a GPU budget) the default stands.
3. The compute-optimal rule of ``plan.sizing`` (Hoffmann et al. 2022): the largest
   shape that still trains on at least ``TOKENS_PER_PARAM`` (20) tokens per
   non-embedding parameter. With a ladder fitted on this run's data (``fmforge ladder``) its law
   decides instead: the one-variable law's own tokens-per-parameter rule, or the
   shape with the lowest predicted loss under the two-variable law.
4. When the data is known, a model is not grown past what ``MAX_USEFUL_EPOCHS``
   passes over it can train by the same rule (more time then buys repetition).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fmforge.config import ModelConfig
from fmforge.hardware import Hardware
from fmforge.model.counting import Architecture, count_params, from_model_config
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.estimate import make_plan
from fmforge.plan.scaling import ScalingLaw
from fmforge.plan.sizing import MAX_USEFUL_EPOCHS, TOKENS_PER_PARAM

WIDTHS = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512, 640, 768, 896, 1024, 1280,
          1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192)
MIN_VOCAB, MAX_VOCAB = 512, 65_536
# Share of a minutes budget that trains: the trainer leaves 3% unused and spends
# about 1-2% on validation (fmforge.train.budget).
USABLE_FRACTION = 0.95


def shape_for_width(d_model: int) -> tuple[int, int]:
    """(n_layers, n_heads) of the family's shape of width ``d_model``."""
    layers = max(2, round(d_model / 64)) if d_model <= 1024 else 16 + (d_model - 1024) // 128
    head_dim = 32 if d_model <= 384 else 64 if d_model <= 2048 else 128
    return layers, max(1, d_model // head_dim)


def _arch(d: int, layers: int, heads: int, vocab: int, seq_len: int) -> Architecture:
    # the config's own defaults (d_ff, tied embeddings): what training will build
    return from_model_config(ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
                                         seq_len=seq_len))


# The embedding may hold up to this many times the rest of the model. Measured on
# 2-minute CPU runs of a documentation folder (benchmarks/README.md, "Sizing the
# model for the budget"): the 64 x 2 shape with a 1,024 vocabulary (the embedding
# as big as the rest) ended at 2.563 bits/byte, with 4,096 (2.5 times) at 2.307;
# the demo's 8,192 at d_model 96 is 2.4 times. A larger vocabulary puts more bytes
# in each token, so each step sees more text, and the embedding is a lookup.
EMBEDDING_SHARE = 2.5


def vocab_for(d_model: int, layers: int, heads: int, seq_len: int) -> int:
    """The largest power of two V with V·d no bigger than EMBEDDING_SHARE times the
    non-embedding parameters."""
    rest = count_params(_arch(d_model, layers, heads, MIN_VOCAB, seq_len)).non_embedding
    v = 2 ** int(math.floor(math.log2(max(1, EMBEDDING_SHARE * rest // d_model))))
    return min(MAX_VOCAB, max(MIN_VOCAB, v))


@dataclass(frozen=True)
class Candidate:
    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int
    params: int
    non_embedding_params: int
    tokens_per_s: float
    tokens: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


@dataclass(frozen=True)
class ModelSize(Candidate):
    """The chosen shape and why: what ``fmforge init`` writes and ``model: auto`` trains.
    ``tokens_per_s`` is the planner's, on ``hardware`` at ``mfu``; ``tokens`` what the
    budget trains at that speed."""

    seconds: float  # the budget, in seconds of wall time on ``num_devices`` devices
    hardware: str
    peak_flops: float
    mfu: float
    dtype: str
    num_devices: int
    rule: str  # which rule chose it, in words
    notes: list[str] = field(default_factory=list)

    def model_keys(self) -> dict[str, int]:
        """The config keys this decides (model.* and tokenizer.vocab_size)."""
        return {"d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "vocab_size": self.vocab_size}

    def describe(self) -> str:
        return (f"d_model {self.d_model}, {self.n_layers} layers, {self.n_heads} heads, vocabulary "
                f"{self.vocab_size:,}: {self.params:,} parameters; {self.tokens_per_s:,.0f} tokens/s "
                f"planned on {self.hardware} ({'bf16' if self.dtype in ('autocast', 'bfloat16') else self.dtype}, "
                f"MFU {self.mfu:.2g}) → {self.tokens:,.0f} tokens "
                f"in {self.seconds / 60:.3g} min, {self.tokens / self.non_embedding_params:.0f} tokens per "
                f"non-embedding parameter ({self.rule})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_param": self.tokens_per_param}


def size_model(hardware: Hardware, seconds: float, *, dtype: str = "bfloat16", num_devices: int = 1,
               seq_len: int = 256, micro_batch: int = 16, mfu: float | None = None,
               vocab_size: int | None = None, data_tokens: float | None = None,
               ladder: dict[str, Any] | None = None, max_steps: int | None = None) -> ModelSize:
    """The shape of the family to train for ``seconds`` of wall time on
    ``num_devices`` of ``hardware`` (module docstring). ``dtype``: the planner's
    memory mode (``bfloat16``/``autocast`` or ``float32``); ``vocab_size``: a fixed
    vocabulary; ``data_tokens``: the training tokens available; ``ladder``: a
    ``ladder.json`` whose law decides instead of the 20 tokens/param rule;
    ``max_steps``: a cap on the steps (``train.max_steps`` beside ``max_minutes``),
    which caps the tokens as the trainer and the planner cap them."""
    require_positive("budget in seconds", seconds)
    require_positive("number of devices", num_devices, whole=True)
    if not hardware.peak_flops > 0:
        raise PlanError(f"{hardware.key}: peak FLOP/s unknown, cannot size a model for it")
    usable = seconds * USABLE_FRACTION
    cap = max_steps * micro_batch * seq_len * num_devices if max_steps else math.inf
    candidates = []
    for d in WIDTHS:
        layers, heads = shape_for_width(d)
        vocab = vocab_size or vocab_for(d, layers, heads, seq_len)
        arch = _arch(d, layers, heads, vocab, seq_len)
        plan = make_plan(hardware, tokens=1.0, arch=arch, num_gpus=num_devices, mfu=mfu,
                         micro_batch=micro_batch, dtype=dtype)
        counts = count_params(arch)
        candidates.append((Candidate(d, layers, heads, vocab, counts.total, counts.non_embedding,
                                     plan["tokens_per_s"], min(cap, plan["tokens_per_s"] * usable)), plan["mfu"]))
    notes: list[str] = []
    law = ScalingLaw.from_dict(ladder["law"]) if ladder else None
    if law is not None and not law.one_variable:
        chosen, mfu_used = min(candidates, key=lambda c: law.predict(c[0].non_embedding_params, c[0].tokens))
        rule = "the lowest loss by this run's ladder law"
    else:
        # Parameters are counted without the embedding, as the ladder counts them: at
        # a few hundred thousand parameters the embedding is most of the model but
        # little of its compute, and 20 tokens per parameter with it counted chose
        # models far too small for minutes of CPU (docs/planner.md). From ~100M
        # parameters up, where Chinchilla's rule was fitted, the two counts differ
        # by a few percent.
        ratio = law.tokens_per_param if law is not None else TOKENS_PER_PARAM
        count = lambda c: c.non_embedding_params  # noqa: E731
        rule = (f"this run's ladder rule, {ratio:g} tokens per non-embedding parameter" if law is not None
                else f"compute-optimal, at least {ratio:g} tokens per non-embedding parameter")
        fitting = [c for c in candidates if c[0].tokens >= ratio * count(c[0])]
        if not fitting:
            fitting = candidates[:1]
            notes.append(f"the budget is too small for even the smallest shape at {ratio:g} tokens per "
                         "non-embedding parameter: "
                         "it trains on fewer tokens than the rule asks; give more minutes")
        if data_tokens:
            within = [c for c in fitting if ratio * count(c[0]) <= MAX_USEFUL_EPOCHS * data_tokens]
            if len(within) < len(fitting):
                notes.append(f"data-limited: {data_tokens:,.0f} tokens of data suit a model trained on at "
                             f"most {MAX_USEFUL_EPOCHS:g} passes; a bigger one would need more data, "
                             "not more time")
                fitting = within or fitting[:1]
        chosen, mfu_used = fitting[-1]
    return ModelSize(**asdict(chosen), seconds=seconds, hardware=hardware.key, peak_flops=hardware.peak_flops,
                     mfu=mfu_used, dtype=dtype, num_devices=num_devices, rule=rule, notes=notes)


# ------------------------------------------------------- measured on this machine

MEASURE_STEPS = 3  # timed training steps of a shape (after one untimed)


def measure_tokens_per_s(size: ModelSize, micro_batch: int, seq_len: int, device: str = "cpu") -> float:
    """Tokens/s of a few real training steps (forward, backward, AdamW) of the
    shape ``size`` on this machine, in its precision: the best of MEASURE_STEPS,
    as the trainer's budget times its own first steps."""
    import time

    import torch

    from fmforge.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=size.vocab_size, d_model=size.d_model, n_layers=size.n_layers,
                      n_heads=size.n_heads, seq_len=seq_len)
    model = Transformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, size.vocab_size, (micro_batch, seq_len + 1), generator=gen).to(device)
    amp = size.dtype == "autocast"
    best = float("inf")
    for i in range(MEASURE_STEPS + 1):
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return micro_batch * seq_len / best


def size_model_measured(hardware: Hardware, seconds: float, *, device: str = "cpu", rounds: int = 2,
                        **kw: Any) -> ModelSize:
    """``size_model`` with this machine's measured speed: the planner's default MFU
    is a guess (on a busy CPU, or for a model of a few hundred thousand parameters,
    it can be off many times over), so the chosen shape is timed for a few steps
    (``measure_tokens_per_s``), the MFU it reached replaces the guess, and the
    shape is chosen again; ``rounds`` times."""
    size = size_model(hardware, seconds, **kw)
    default_mfu = size.mfu
    for _ in range(rounds):
        tps = measure_tokens_per_s(size, kw.get("micro_batch", 16), kw.get("seq_len", 256), device)
        mfu = min(1.0, size.mfu * tps / size.tokens_per_s)
        again = size_model(hardware, seconds, **{**kw, "mfu": mfu})
        again.notes.append(f"speed measured on this machine: {tps:,.0f} tokens/s for the "
                           f"{size.params:,}-parameter shape, MFU {mfu:.3f} (the planner's default was "
                           f"{default_mfu:.2f})")
        if again.model_keys() == size.model_keys():
            return again
        size = again
    return size


# ------------------------------------------------------------- model: auto

RECORD = "model_size.json"  # in the run directory: the decision, reused by later commands


def _budget_inputs(cfg: Any, hardware: str, dtype: str, ladder: dict[str, Any] | None) -> dict[str, Any]:
    """What the decision depends on: a change of any of these sizes the model again."""
    return {"max_minutes": cfg.train.max_minutes, "hardware": hardware, "dtype": dtype,
            "seq_len": cfg.model.seq_len, "micro_batch": cfg.train.micro_batch_size,
            "tokens_per_step": cfg.train.tokens_per_step(cfg.model.seq_len), "max_steps": cfg.train.max_steps,
            "num_threads": cfg.train.num_threads, "mfu": cfg.plan.mfu,
            "fixed_vocab": _fixed_vocab(cfg), "ladder_law": ladder.get("law") if ladder else None}


def _fixed_vocab(cfg: Any) -> int | None:
    t = cfg.tokenizer
    return t.vocab_size if "vocab_size" in t.model_fields_set or t.path is not None else None


def resolve_auto_model(cfg: Any) -> tuple[Any, ModelSize, bool]:
    """Size a ``model: auto`` config for ``train.max_minutes`` on the device it will
    train on: (the sized config, the decision, whether it was reused). The decision
    is kept in ``RUN/model_size.json`` and reused while its inputs (budget, device,
    precision, context, micro-batch, threads, fixed vocabulary, ladder) are the
    same, so every stage command of a run sees the same model."""
    import json
    from pathlib import Path

    from fmforge.hardware import get_hardware
    from fmforge.plan.estimate import run_device, run_dtype
    from fmforge.plan.scaling import read_ladder
    from fmforge.rundir import atomic_write_json

    if not cfg.model.auto:
        raise PlanError("resolve_auto_model needs a config with model: auto")
    if cfg.train.num_threads:
        import torch

        torch.set_num_threads(cfg.train.num_threads)  # the CPU peak is measured per thread count
    key = run_device(cfg)
    mode = run_dtype(cfg, key)
    ladder = read_ladder(Path(cfg.run_dir))
    inputs = _budget_inputs(cfg, key, mode, ladder)
    record_path = Path(cfg.run_dir) / RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("inputs") == json.loads(json.dumps(inputs)):
                size = ModelSize(**{k: v for k, v in record["size"].items() if k != "tokens_per_param"})
                return cfg.with_model_size(**size.model_keys()), size, True
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged record is decided again and rewritten
    from fmforge.launch import current_launch

    if current_launch().distributed:
        # every process must build the same model: one decision, made before the launch
        raise PlanError(f"model: auto under torchrun needs the size decided first: run the earlier stages "
                        f"without torchrun (fmforge run CONFIG, or fmforge data/tokenizer/tokenize CONFIG), "
                        f"which writes {record_path}; or give the model's size keys")
    hw = get_hardware(key, cfg.plan.price_per_gpu_hour, cpu_dtype="bfloat16" if mode == "autocast" else "float32")

    kw = dict(dtype=mode, num_devices=1, seq_len=cfg.model.seq_len,
              micro_batch=cfg.train.micro_batch_size * cfg.train.grad_accum_for(cfg.model.seq_len, 1),
              vocab_size=_fixed_vocab(cfg), ladder=ladder, max_steps=cfg.train.max_steps)
    if cfg.plan.mfu is not None:  # an MFU given by hand is trusted, not measured
        size = size_model(hw, cfg.train.max_minutes * 60, mfu=cfg.plan.mfu, **kw)
    else:
        size = size_model_measured(hw, cfg.train.max_minutes * 60, device="cpu" if key == "cpu" else "cuda", **kw)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_path, {"inputs": inputs, "size": size.to_dict()})
    return cfg.with_model_size(**size.model_keys()), size, False
