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
   passes over it can train by the same rule (under the two-variable law:
   ``TOKENS_PER_PARAM``, and tokens past those passes count for nothing); more
   time then buys repetition, and a note names the epochs.

``budget_optimum``: what a compute budget buys by a ladder's law among the same
family's real shapes, each with its own FLOPs per token (``plan --budget``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fmforge.config import ModelConfig
from fmforge.hardware import Hardware
from fmforge.model.counting import Architecture, count_params, from_model_config, train_flops_per_token
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.estimate import make_plan
from fmforge.plan.scaling import ScalingLaw, Shape
from fmforge.plan.sizing import MAX_USEFUL_EPOCHS, TOKENS_PER_PARAM, data_tokens_from_run, repetition_note

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


def family_shapes(model: ModelConfig) -> list[Shape]:
    """The family's shapes (``shape_for_width`` at each of ``WIDTHS``) built as
    ``model`` builds its own: its vocabulary, context, tied embeddings, feed-forward
    rule and grouped-query ratio; each with its real parameter and FLOPs counts."""
    group = model.n_heads // model.kv_heads
    out = []
    for d in WIDTHS:
        layers, heads = shape_for_width(d)
        kv = heads // group if group > 1 and heads % group == 0 else None
        cfg = model.model_copy(update={"d_model": d, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv,
                                       "d_ff": None})
        arch = from_model_config(cfg)
        counts = count_params(arch)
        out.append(Shape(float(counts.non_embedding), float(counts.total), float(train_flops_per_token(arch)),
                         {"d_model": d, "n_layers": layers, "n_heads": heads}))
    return out


def budget_optimum(law: ScalingLaw, compute: float, model: ModelConfig) -> dict[str, Any]:
    """What ``compute`` training FLOPs (the project's own count) buy by ``law``
    among the family's real shapes with ``model``'s vocabulary and choices
    (``ScalingLaw.optimum_over``): tokens × FLOPs per token = ``compute``."""
    return law.optimum_over(compute, family_shapes(model))


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
               ladder: dict[str, Any] | None = None, max_steps: int | None = None,
               more_time: str = "give more minutes") -> ModelSize:
    """The shape of the family to train for ``seconds`` of wall time on
    ``num_devices`` of ``hardware`` (module docstring). ``dtype``: the planner's
    memory mode (``bfloat16``/``autocast`` or ``float32``); ``vocab_size``: a fixed
    vocabulary; ``data_tokens``: the training tokens available; ``ladder``: a
    ``ladder.json`` whose law decides instead of the 20 tokens/param rule;
    ``max_steps``: a cap on the steps (``train.max_steps`` beside ``max_minutes``),
    which caps the tokens as the trainer and the planner cap them; ``more_time``: what
    the too-small note tells the user to raise (``init --budget`` gave dollars)."""
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
        # The law assumes fresh tokens: left alone it grows the model past what the
        # data can feed and counts repeated tokens as new. A shape is fed when
        # TOKENS_PER_PARAM tokens per parameter fit in MAX_USEFUL_EPOCHS passes, and
        # tokens past those passes count for nothing in its prediction.
        fed = candidates
        useful = math.inf
        if data_tokens:
            useful = MAX_USEFUL_EPOCHS * data_tokens
            fed = [c for c in candidates if TOKENS_PER_PARAM * c[0].non_embedding_params <= useful]
            if len(fed) < len(candidates):
                notes.append(_data_limited(data_tokens, TOKENS_PER_PARAM))
            fed = fed or candidates[:1]
        chosen, mfu_used = min(fed, key=lambda c: law.predict(c[0].non_embedding_params, min(c[0].tokens, useful)))
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
            # what to change: the minutes where the time is short, train.max_steps where its cap
            # is (more minutes change nothing under a cap), or both
            smallest = candidates[0][0]
            need = ratio * count(smallest)
            fix = [what for what, short in (
                (more_time, smallest.tokens_per_s * usable < need),
                (f"raise train.max_steps (it caps the training at {cap:,.0f} tokens)", cap < need)) if short]
            notes.append(f"the budget is too small for even the smallest shape at {ratio:g} tokens per "
                         "non-embedding parameter: "
                         f"it trains on fewer tokens than the rule asks; {' and '.join(fix)}")
        if data_tokens:
            within = [c for c in fitting if ratio * count(c[0]) <= MAX_USEFUL_EPOCHS * data_tokens]
            if len(within) < len(fitting):
                notes.append(_data_limited(data_tokens, ratio))
                fitting = within or fitting[:1]
        chosen, mfu_used = fitting[-1]
    repeats = repetition_note(chosen.tokens, data_tokens, "the chosen model, trained for the whole budget,")
    if repeats:
        notes.append(repeats)
    return ModelSize(**asdict(chosen), seconds=seconds, hardware=hardware.key, peak_flops=hardware.peak_flops,
                     mfu=mfu_used, dtype=dtype, num_devices=num_devices, rule=rule, notes=notes)


def _data_limited(data_tokens: float, ratio: float) -> str:
    return (f"data-limited: {data_tokens:,.0f} tokens of data feed a model of at most "
            f"{MAX_USEFUL_EPOCHS * data_tokens / ratio:,.0f} non-embedding parameters ({ratio:g} tokens per "
            f"parameter in {MAX_USEFUL_EPOCHS:g} passes over the data); a bigger one would need more data, "
            "not more time")


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
    same, so every stage command of a run sees the same model. It is sized for the
    data the run has (``sizing.data_tokens_from_run``: its tokens, else its data
    card); data that arrives or changes later sizes it again only while nothing
    was built for the model yet (a tokenizer, a checkpoint), else it is kept and
    a note says what the data would choose."""
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
    # The data the run has (its tokens, else its data card's bytes): a model is not
    # sized past what it can feed. Before the data stage it is unknown.
    found = data_tokens_from_run(cfg.run_dir)
    data_tokens = found[0] if found else None
    earlier, record = None, {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("inputs") == json.loads(json.dumps(inputs)):
                earlier = ModelSize(**{k: v for k, v in record["size"].items() if k != "tokens_per_param"})
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged record is decided again and rewritten
    from fmforge.launch import current_launch

    if earlier is not None and (data_tokens is None or record.get("data_tokens") == data_tokens
                                or current_launch().distributed):
        return cfg.with_model_size(**earlier.model_keys()), earlier, True
    if current_launch().distributed:
        # every process must build the same model: one decision, made before the launch
        raise PlanError(f"model: auto under torchrun needs the size decided first: run the earlier stages "
                        f"without torchrun (fmforge run CONFIG, or fmforge data/tokenizer/tokenize CONFIG), "
                        f"which writes {record_path}; or give the model's size keys")
    hw = get_hardware(key, cfg.plan.price_per_gpu_hour, cpu_dtype="bfloat16" if mode == "autocast" else "float32")

    kw = dict(dtype=mode, num_devices=1, seq_len=cfg.model.seq_len,
              micro_batch=cfg.train.micro_batch_size * cfg.train.grad_accum_for(cfg.model.seq_len, 1),
              vocab_size=_fixed_vocab(cfg), ladder=ladder, max_steps=cfg.train.max_steps,
              data_tokens=data_tokens)
    seconds = cfg.train.max_minutes * 60
    reused = False
    if earlier is not None:
        # Only the data is new (the data stage ran since, or its output changed): the
        # speed measured before stands. The model changes only while nothing built
        # for it (the tokenizer, a checkpoint) exists yet.
        size = size_model(hw, seconds, mfu=earlier.mfu, **kw)
        run = Path(cfg.run_dir)
        built = (run / "tokenizer" / "tokenizer.json").is_file() or any((run / "checkpoints").glob("step-*"))
        if size.model_keys() == earlier.model_keys():
            reused = True
        elif built:
            earlier.notes.append(
                f"sized before the run's data ({data_tokens:,.0f} tokens, {found[1]}) was known; for it the rule "
                f"now picks d_model {size.d_model}, {size.n_layers} layers ({size.non_embedding_params:,} "
                f"non-embedding parameters). Kept, since its tokenizer or checkpoints exist: delete {record_path} "
                "and rerun from the tokenizer stage to size again")
            repeats = repetition_note(earlier.tokens, data_tokens, "the model, trained for the whole budget,")
            if repeats:
                earlier.notes.append(repeats)
            return cfg.with_model_size(**earlier.model_keys()), earlier, True
    elif cfg.plan.mfu is not None:  # an MFU given by hand is trusted, not measured
        size = size_model(hw, seconds, mfu=cfg.plan.mfu, **kw)
    else:
        size = size_model_measured(hw, seconds, device="cpu" if key == "cpu" else "cuda", **kw)
    if found:
        size.notes.append(f"sized for the run's data: {data_tokens:,.0f} tokens ({found[1]})")
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_path, {"inputs": inputs, "data_tokens": data_tokens, "size": size.to_dict()})
    return cfg.with_model_size(**size.model_keys()), size, reused
