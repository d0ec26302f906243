"""``fmforge finetune``: a pretrained Hugging Face causal LM, customized.

Writes under ``runs/NAME/finetune/``::

    checkpoints/step-NNNNNN/   trainable weights, optimizer, trainer_state.json
    metrics.jsonl, tb/         per logged step (loss, val_loss, lr, tokens/s)
    bad_lines.jsonl            every rejected example: file, line, reason
    adapter/ (or model/)       the PEFT adapter (lora, qlora) or the whole model (full)
    summary.json               what was trained and measured (the planner reads it)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from fmforge.config import ConfigError, RunConfig
from fmforge.errors import InputFileMissing
from fmforge.finetune.data import (
    ExampleLoader,
    ReadReport,
    check_bad_fraction,
    ensure_chat_template,
    expand_paths,
    pack,
    pad_id_of,
    read_examples,
    split_validation,
    tokenize_examples,
    unpacked,
)
from fmforge.finetune.evaluate import loss_over, sequence_batches
from fmforge.finetune.lora import (
    BaseModelError,
    add_adapters,
    base_config,
    check_qlora_possible,
    count_trainable,
    load_base,
)
from fmforge.finetune.trainer import LoopSettings, run_loop
from fmforge.progress import log
from fmforge.rundir import ArtifactError, RunDir, atomic_directory, atomic_write_json, atomic_write_text, fingerprint
from fmforge.train.device import autocast, configure_threads, pick_device, resolve_dtype

# Keys that do not change what is trained: a resumed run may differ in them.
_NOT_LINEAGE = {"log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                "tensorboard", "num_threads", "output", "device", "activation_checkpointing"}


def finetune_dir(cfg: RunConfig) -> RunDir:
    return RunDir(cfg.run_dir / "finetune")


def output_dir(cfg: RunConfig) -> Path:
    fc = cfg.finetune
    if fc.output:
        return Path(fc.output)
    return finetune_dir(cfg).root / ("model" if fc.method == "full" else "adapter")


def is_fmforge_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def resolve_base(cfg: RunConfig) -> Path:
    """``finetune.base`` as a path: as given, else relative to the config's directory,
    else a run name under runs/."""
    given = Path(os.path.expanduser(cfg.finetune.base))
    candidates = [given]
    if cfg.config_dir and not given.is_absolute():
        candidates.append(Path(cfg.config_dir) / given)
    candidates.append(Path("runs") / given)
    for c in candidates:
        if (c / "config.json").is_file() or is_fmforge_run(c):
            return c.resolve()
    raise InputFileMissing(f"finetune.base={cfg.finetune.base!r} is neither a Hugging Face model "
                           "directory (with config.json) nor an fmforge run directory "
                           f"(looked at {', '.join(str(c) for c in candidates)})")


def _files_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _base_fingerprint(base_dir: Path) -> str:
    files = sorted(f for f in base_dir.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors"))
    return _files_fingerprint(files)


def _write_bad_lines(ft: RunDir, report: ReadReport) -> None:
    atomic_write_text(ft.root / "bad_lines.jsonl",
                      "".join(json.dumps({"file": b.file, "line": b.line, "reason": b.reason}) + "\n"
                              for b in report.bad))


class _TokenWindows:
    """Continued pretraining: the run's token windows, every token a target."""

    def __init__(self, loader):
        self.loader = loader

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        x, y = self.loader.batch(step, micro)
        return {"input_ids": x, "targets": y}

    def epoch_at(self, step: int) -> float:
        return self.loader.epoch_at(step)


def _run_tokenizer(run: RunDir):
    """The run's own tokenizer (what its token shards were encoded with)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (run.tokenizer / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(run.tokenizer), local_files_only=True)
    return PreTrainedTokenizerFast(tokenizer_file=str(run.tokenizer / "tokenizer.json"))


def _token_data(cfg: RunConfig, base_tokenizer, model):
    """Continued pretraining: loaders over the run's ``tokens/``, checked against the
    base. The shards must come from the base's own tokenizer (``tokenizer.path``);
    tokens the tokenizer stage added (a missing EOS or padding token) get new rows."""
    from fmforge.tokenizer.tokens import load_meta, open_tokens
    from fmforge.train.loader import EpochWindowLoader

    fc, run = cfg.finetune, RunDir(cfg.run_dir)
    meta = load_meta(run)
    run_tok = _run_tokenizer(run)
    ours, theirs = run_tok.get_vocab(), base_tokenizer.get_vocab()
    differ = [t for t, i in theirs.items() if ours.get(t) != i]
    if differ:
        raise ArtifactError(
            f"the token shards in {run.tokens} were encoded with a tokenizer that is not the base "
            f"model's ({len(differ):,} of its {len(theirs):,} tokens have other ids, e.g. "
            f"{differ[:3]}): set tokenizer.path to the base model directory "
            f"({cfg.finetune.base}) and rerun `fmforge tokenizer` and `fmforge tokenize`")
    rows = model.get_input_embeddings().num_embeddings
    if meta["vocab_size"] > rows:
        log(f"the run's tokenizer has {meta['vocab_size'] - rows} token(s) the base lacks: "
            "adding embedding rows for them")
        model.resize_token_embeddings(meta["vocab_size"])
    train = EpochWindowLoader(open_tokens(run, "train"), fc.seq_len, fc.micro_batch_size,
                              fc.grad_accum_steps, cfg.seed)
    return _TokenWindows(train), open_tokens(run, "val"), train.n_windows, run_tok


def run_finetune(cfg: RunConfig, base_dir: Path | None = None, fresh: bool = False,
                 export_run: Callable[[Path, Path], Path] | None = None,
                 write_card: Callable[[Path, dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.finetune.base`` (or ``base_dir``) and write the adapter or model.
    ``export_run(run_dir, out_dir)`` turns an fmforge run given as the base into a
    Hugging Face directory (the CLI passes ``fmforge.export.hf.export_hf``);
    ``write_card(dir, summary)`` writes the output's model card into it before it
    is renamed into place (the CLI passes ``fmforge.export.card.write_finetune_card``)."""
    fc = cfg.finetune
    if fc is None:
        raise ConfigError("the config has no finetune section: add one (see docs/finetune.md)")
    if fc.method == "qlora":
        check_qlora_possible()  # before anything is read or loaded
    from transformers import AutoTokenizer

    ft = finetune_dir(cfg)
    ft.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ft.config, cfg.to_yaml())  # what this fine-tune ran with
    run = RunDir(cfg.run_dir)
    if not run.config.exists():  # a finetune-only run: the run directory's own record (`plan --actual`)
        atomic_write_text(run.config, cfg.to_yaml())
    base_dir = Path(base_dir) if base_dir is not None else resolve_base(cfg)
    if is_fmforge_run(base_dir) and not (base_dir / "config.json").is_file():
        if export_run is None:
            raise BaseModelError(f"finetune.base={base_dir} is an fmforge run: export it first "
                                 f"(`fmforge export hf {base_dir} OUT`) and name OUT")
        exported = ft.root / "base-hf"
        states = list((base_dir / "checkpoints").glob("step-*/trainer_state.json"))
        newest = max((p.stat().st_mtime for p in states), default=float("inf"))
        if (exported / "config.json").is_file() and (exported / "config.json").stat().st_mtime >= newest:
            base_dir = exported  # exported from the same checkpoint before: a rerun resumes
        else:
            base_dir = export_run(base_dir, exported)
            log(f"base: the fmforge run exported to {base_dir}")
    base_dir = base_dir.resolve()
    model_type = base_config(base_dir).get("model_type")

    tcfg0 = fc.train_view(1)
    configure_threads(tcfg0)
    device = pick_device(fc.device)
    dtype = resolve_dtype(device, tcfg0)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"{base_dir}: transformers cannot load its tokenizer ({exc})") from exc
    template = ensure_chat_template(tokenizer, fc.template)
    pad_id = pad_id_of(tokenizer)

    model = load_base(base_dir, fc.method, device,
                      torch.bfloat16 if fc.method == "qlora" else torch.float32)
    counts: dict[str, Any] = {}
    if fc.train_on == "tokens":
        batches, val_tokens, n_train, tokenizer = _token_data(cfg, tokenizer, model)
        max_steps = fc.max_steps or max(1, int(fc.epochs * n_train / (fc.micro_batch_size * fc.grad_accum_steps)))
        data_fp = _files_fingerprint(sorted(RunDir(cfg.run_dir).tokens.glob("*")))
        counts = {"train_windows": n_train, "val_tokens": int(len(val_tokens))}

        def val_batches():
            from fmforge.train.loader import EpochWindowLoader

            if len(val_tokens) <= fc.seq_len:
                return []
            n = min((len(val_tokens) - 1) // fc.seq_len, fc.eval_batches * fc.micro_batch_size)
            loader = EpochWindowLoader(val_tokens, fc.seq_len, n, 1, cfg.seed)
            x, y = loader.batch(0, 0)
            return [{"input_ids": x[i:i + fc.micro_batch_size], "targets": y[i:i + fc.micro_batch_size]}
                    for i in range(0, n, fc.micro_batch_size)]
    else:
        train_files = expand_paths(fc.data, cfg.config_dir)
        val_files = expand_paths(fc.val_data, cfg.config_dir) if fc.val_data else []
        report = ReadReport()
        examples = []
        for f in train_files:
            got, r = read_examples(f)
            examples += got
            report.add(r)
        val_examples = []
        for f in val_files:
            got, r = read_examples(f)
            val_examples += got
            report.add(r)
        if not val_files:
            examples, val_examples = split_validation(examples, fc.val_fraction, cfg.seed)
        train_tok = tokenize_examples(tokenizer, examples, fc.seq_len, report)
        val_tok = tokenize_examples(tokenizer, val_examples, fc.seq_len, report)
        _write_bad_lines(ft, report)
        for bad in report.bad[:20]:
            log(f"[yellow]bad example {bad}[/yellow]")
        if len(report.bad) > 20:
            log(f"[yellow]... {len(report.bad) - 20} more in {ft.root / 'bad_lines.jsonl'}[/yellow]")
        check_bad_fraction(report, fc.max_bad_fraction)
        seqs = pack(train_tok, fc.seq_len) if fc.packing else unpacked(train_tok)
        loader = ExampleLoader(seqs, fc.micro_batch_size, fc.grad_accum_steps, cfg.seed, pad_id)
        batches = loader
        max_steps = fc.max_steps or loader.steps_for(fc.epochs)
        data_fp = _files_fingerprint(train_files + val_files)
        val_seqs = unpacked(val_tok)
        counts = {"lines": report.lines, "bad_lines": len(report.bad), "train_examples": len(train_tok),
                  "val_examples": len(val_tok), "train_sequences": len(seqs),
                  "train_target_tokens": sum(t.n_loss_tokens for t in train_tok)}
        log(f"data: {report.lines:,} lines, {len(report.bad):,} bad; {len(train_tok):,} training examples"
            + (f" packed into {len(seqs):,} sequences" if fc.packing else "")
            + f", {len(val_tok):,} held out; template: {template}")

        def val_batches():
            return sequence_batches(val_seqs[: fc.eval_batches * fc.micro_batch_size], fc.micro_batch_size, pad_id)

    if fc.activation_checkpointing:
        # Non-reentrant: the frozen embedding's output needs no gradient of its own
        # for the recomputed layers to get theirs (LoRA, QLoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fc.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        torch.manual_seed(cfg.seed)  # peft draws the adapters' A matrices from the global generator
        model = add_adapters(model, fc)
    trainable = count_trainable(model)
    log(str(trainable))

    tcfg = fc.train_view(max_steps)
    lineage = fingerprint({k: v for k, v in fc.model_dump(mode="json").items() if k not in _NOT_LINEAGE},
                          _base_fingerprint(base_dir), data_fp, cfg.seed)
    amp = lambda: autocast(device, tcfg)  # noqa: E731

    def validate() -> dict[str, float]:
        loss, n = loss_over(model, val_batches(), device, amp)
        return {"val_loss": round(loss, 5)} if n else {}

    settings = LoopSettings(max_steps=max_steps, grad_accum=fc.grad_accum_steps, seed=cfg.seed,
                            lineage=lineage, device=device, dtype=dtype)
    measured = run_loop(model, batches, tcfg, ft, settings, validate=validate, fresh=fresh)

    out = output_dir(cfg)
    summary = {
        "method": fc.method, "train_on": fc.train_on, "base": str(base_dir), "model_type": model_type,
        "base_config": str(base_dir / "config.json"), "output": str(out.resolve()),
        "template": template, "lora_r": fc.lora.r if fc.method != "full" else None,
        "trainable_params": trainable.trainable, "total_params": trainable.total,
        "trainable_share": trainable.share, "seq_len": fc.seq_len,
        "micro_batch_size": fc.micro_batch_size, "grad_accum_steps": fc.grad_accum_steps,
        "device": str(device), "dtype": dtype, **counts, **measured,
    }
    with atomic_directory(out) as tmp:
        model.save_pretrained(str(tmp))  # an adapter gets PEFT's README.md, which names the base's path
        tokenizer.save_pretrained(str(tmp))  # with the chat template it was trained with
        if write_card is not None:
            write_card(tmp, summary)  # replaces it
    log(f"{'model' if fc.method == 'full' else 'adapter'} written to {out}")
    atomic_write_json(ft.root / "summary.json", summary)
    return summary
