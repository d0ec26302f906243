"""``fmforge init``: a commented run config for folders of the user's files, with
the model and vocabulary sized for a budget by the planner's rule
(``fmforge.plan.autosize``), validated by the config loader and written
atomically."""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmforge.config import ConfigError, RunConfig, load_config
from fmforge.errors import UserError
from fmforge.hardware import Hardware, cpu_has_native_bf16, detect_gpu, get_hardware
from fmforge.init.scan import Scan, problems_by_reason, scan_folders, summary_by_extension
from fmforge.init.sources import SourcePlan, plan_sources
from fmforge.plan.autosize import ModelSize, size_model, size_model_measured
from fmforge.plan.scaling import read_ladder
from fmforge.plan.sizing import BYTES_PER_TOKEN

DEFAULT_MINUTES = 10.0
MICRO_BATCH = 16
SEQ_LEN = 256
WARMUP_STEPS = 100


class InitError(UserError, ValueError):
    """A problem with the command's arguments or its output path; says what to do."""


@dataclass
class Budget:
    minutes: float | None = None  # of this machine
    usd: float | None = None  # on gpu × num_gpus
    gpu: str | None = None
    num_gpus: int = 1


@dataclass
class InitResult:
    config_path: Path
    config: RunConfig
    scan: Scan
    size: ModelSize
    max_steps: int | None
    warnings: list[str]
    next_commands: list[str]


def _hardware(budget: Budget) -> tuple[Hardware, str, float, int]:
    """(hardware, the planner's precision mode, seconds of wall time, devices)."""
    if budget.usd is not None:
        if budget.gpu is None:
            raise InitError("--budget needs --gpu KIND (a key of the hardware catalogue, e.g. h100-sxm)")
        if budget.minutes is not None:
            raise InitError("give --minutes (this machine) or --budget with --gpu, not both")
        if budget.usd <= 0 or budget.num_gpus < 1:
            raise InitError("--budget must be above 0 and --num-gpus at least 1")
        hw = get_hardware(budget.gpu)
        if hw.price_per_hour <= 0:
            raise InitError(f"{hw.key} has no price per hour in the catalogue: size by --minutes instead")
        seconds = budget.usd / (hw.price_per_hour * budget.num_gpus) * 3600
        return hw, "autocast", seconds, budget.num_gpus
    minutes = budget.minutes if budget.minutes is not None else DEFAULT_MINUTES
    if minutes <= 0:
        raise InitError(f"--minutes must be above 0, got {minutes:g}")
    import torch

    key = (detect_gpu() or "h100-sxm") if torch.cuda.is_available() else "cpu"
    mode = "autocast" if key != "cpu" or cpu_has_native_bf16() else "float32"
    hw = get_hardware(key, cpu_dtype="bfloat16" if mode == "autocast" else "float32")
    return hw, mode, minutes * 60, 1


def _simple(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON strings are YAML flow scalars


def _files(n: int) -> str:
    return f"{n:,} file{'' if n == 1 else 's'}"


def render_config(name: str, scan: Scan, plans: dict[str, SourcePlan], size: ModelSize, budget: Budget,
                  max_steps: int | None, data_tokens: float) -> str:
    mb = scan.total_bytes / 1e6
    out = [
        f"# Written by `fmforge init` on {datetime.date.today().isoformat()} for",
        *[f"#   {d}" for d in scan.dirs],
        f"# {sum(len(g.files) for g in scan.groups.values()):,} files, {mb:,.1f} MB "
        f"(about {data_tokens:,.0f} tokens at {BYTES_PER_TOKEN:g} bytes/token). Every key: docs/config.md.",
        f"name: {_q(name)}",
        "data:",
        "  sources:",
    ]
    for key, group in sorted(scan.groups.items(), key=lambda kv: -kv[1].bytes):
        plan = plans[key]
        out.append(f"    # {_files(len(group.files))}, {group.bytes / 1e6:,.1f} MB: {summary_by_extension(group.files)}")
        out.append(f"    - name: {group.name}")
        out.append(f"      type: {group.type}")
        if plan.rest:
            out.append("      # the whole folder, less the files of the other sources and those init cannot read")
        for other, names in plan.joined.items():
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            out.append(f"      # with {_files(len(names))} of {other} beyond its dozen patterns ({shown})")
        for key, n in plan.reassigned.items():
            out.append(f"      # with {_files(n)} that looked like another kind, named like this source's ({key})")
        out.append("      paths:")
        out += [f"        - {_q(p.pattern)}  # {_files(p.files)}" for p in plan.paths]
        if plan.exclude:
            out.append("      exclude:")
            out += [f"        - {_q(x.pattern)}  # {_files(x.files)}: {x.note}" for x in plan.exclude]
        if group.text_field is not None:
            out.append(f"      text_field: {_q(group.text_field)}  # guessed from {group.guessed_from}: check it")
        if group.text_column is not None:
            out.append(f"      text_column: {_q(group.text_column)}  # guessed from {group.guessed_from}: check it")
        why = {"prose": "books, manuals, notes: the two Gopher filters", "code": "the code rules",
               "web": "web pages: Gopher, C4 and FineWeb rules"}[group.filters]
        out.append(f"      filters: {group.filters}  # {why}")
        out.append("      weight: 1.0  # 2.0 repeats this source's documents twice in the mix")
    out += ["  dedup: exact  # minhash also removes near-duplicates", ""]
    hw_words = (f"{size.num_devices} × {size.hardware}" if budget.usd is not None else
                f"this machine ({size.hardware}, {'bf16' if size.dtype == 'autocast' else 'float32'})")
    out += [
        f"# Sized for {size.seconds / 60:,.3g} min on {hw_words} by the planner's rule (docs/planner.md,",
        f"# \"Sizing a model for a budget\"): {size.tokens_per_s:,.0f} tokens/s planned → {size.tokens:,.0f} tokens,",
        f"# {size.params:,} parameters, {size.tokens_per_param:.0f} tokens/param ({size.rule}).",
        *[f"# note: {n}" for n in size.notes],
        "# `model: auto` instead sizes it again on whatever machine runs the config.",
        "tokenizer:",
        f"  vocab_size: {size.vocab_size}",
        "model:",
        f"  d_model: {size.d_model}",
        f"  n_layers: {size.n_layers}",
        f"  n_heads: {size.n_heads}",
        f"  seq_len: {SEQ_LEN}",
        "train:",
        f"  micro_batch_size: {MICRO_BATCH}",
        f"  warmup_steps: {min(WARMUP_STEPS, max_steps) if max_steps else WARMUP_STEPS}",
    ]
    if max_steps is not None:
        out.append(f"  max_steps: {max_steps}  # {size.tokens:,.0f} tokens at "
                   f"{MICRO_BATCH * SEQ_LEN * size.num_devices:,} per step")
        out += ["plan:", f"  gpu: {size.hardware}", f"  num_gpus: {size.num_devices}"]
    else:
        out.append(f"  max_minutes: {size.seconds / 60:g}  # the step count is fixed from the first steps' speed")
        out.append("  max_steps: null  # no cap on the steps: the minutes decide")
    return "\n".join(out) + "\n"


def write_atomically(path: Path, text: str) -> RunConfig:
    """Validate ``text`` as a run config at ``path`` and put it there in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            cfg = load_config(tmp)
        except ConfigError as exc:  # a bug of init's, not the user's: keep nothing
            raise RuntimeError(f"init wrote a config the loader refuses (please report it):\n{exc}") from exc
        os.replace(tmp, path)
        return cfg
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def init_config(dirs: list[str | Path], out: str | Path | None = None, budget: Budget | None = None,
                name: str | None = None, ladder_run: str | Path | None = None,
                overwrite: bool = False, measure: bool = True) -> InitResult:
    """Scan ``dirs``, size the model for ``budget`` and write the config to ``out``
    (default ``NAME.yaml`` here). Raises ScanError / InitError with what to do.
    ``measure``: time the chosen shape on this machine (a ``--minutes`` budget)
    instead of trusting the planner's default MFU."""
    budget = budget or Budget()
    if not dirs:
        raise InitError("give at least one folder of your files: fmforge init DIR [DIR ...]")
    name = _simple(name or (Path(out).stem if out else Path(dirs[0]).resolve().name))
    path = Path(out) if out else Path(f"{name}.yaml")
    if path.exists() and not overwrite:
        raise InitError(f"{path} exists: choose another name with -o, or pass --force to replace it")
    hw, mode, seconds, devices = _hardware(budget)  # argument errors before the scan
    scan = scan_folders(dirs)
    plans = plan_sources(scan)  # may move a file to another source: before the counts are used
    data_tokens = scan.total_bytes / BYTES_PER_TOKEN
    ladder = None
    if ladder_run is not None:
        ladder = read_ladder(Path(ladder_run))
        if ladder is None:
            raise InitError(f"{ladder_run}: no ladder/ladder.json; run `fmforge ladder CONFIG` first, "
                            "or leave --ladder out for the 20 tokens/param rule")
    kw = dict(dtype=mode, num_devices=devices, seq_len=SEQ_LEN, micro_batch=MICRO_BATCH,
              data_tokens=data_tokens, ladder=ladder)
    if budget.usd is None and measure:  # this machine: its measured speed, as model: auto does
        size = size_model_measured(hw, seconds, device="cpu" if hw.is_cpu else "cuda", **kw)
    else:
        if budget.usd is not None:
            kw["more_time"] = (f"raise --budget (${budget.usd:,.6g} buys {seconds / 60:,.3g} min of "
                               f"{devices} × {hw.key})")
        size = size_model(hw, seconds, **kw)
    max_steps = None
    if budget.usd is not None:
        max_steps = max(1, int(size.tokens // (MICRO_BATCH * SEQ_LEN * devices)))
    text = render_config(name, scan, plans, size, budget, max_steps, data_tokens)
    cfg = write_atomically(path, text)
    return InitResult(path, cfg, scan, size, max_steps, warnings_of(scan), next_commands(path, cfg))


def warnings_of(scan: Scan) -> list[str]:
    out = []

    def listed(paths: list[Path]) -> str:
        return ", ".join(map(str, paths[:5])) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    for why, paths in problems_by_reason(scan.unreadable).items():
        out.append(f"{len(paths):,} unreadable, left out: {listed(paths)} ({why}); fix the permissions "
                   "and run init again to include them")
    if scan.not_utf8:
        out.append(f"{len(scan.not_utf8):,} files are not UTF-8 (mixed encodings): "
                   + "; ".join(f"{p.path}: {p.why}" for p in scan.not_utf8[:5])
                   + ". The data stage keeps them with U+FFFD for the bad bytes; convert them first for "
                   "clean text (iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8)")
    read = {p for g in scan.groups.values() for p in g.files}
    empty = [p for p in scan.empty if p not in read]  # the others are read, as nothing
    if empty:
        out.append(f"{len(empty):,} empty files, left out: {listed(empty)}")
    if scan.left_out:
        n = len(scan.left_out)
        out.append(f"{n:,} readable file{'' if n == 1 else 's'} left out with the folder of unreadable ones around "
                   f"them (one exclude instead of one per file): {listed(scan.left_out)}; add them to a "
                   "source's paths by name to include them")
    hidden, seen = [], set()
    for path, files in scan.hidden:  # a folder reached under several names: once
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            hidden.append(f"{path} ({_files(files)})" if path.is_dir() and not path.is_symlink() else str(path))
    if hidden:
        shown = ", ".join(hidden[:5]) + (f" and {len(hidden) - 5} more" if len(hidden) > 5 else "")
        out.append(f"{len(hidden):,} hidden name{'' if len(hidden) == 1 else 's'} (starting with '.') not read, "
                   f"as the data stage's ** skips them: {shown}; add one to a source's paths by name to read it")
    for loop in scan.loops:
        out.append(f"{loop} links back to a folder above it: not followed, and left out of every source")
    for why, paths in problems_by_reason(scan.unknown).items():
        out.append(f"{len(paths):,} files no source reads, left out: {listed(paths)}: {why}")
    return out


def next_commands(path: Path, cfg: RunConfig) -> list[str]:
    return [f"fmforge plan {path}          # what the run costs, before it starts",
            f"fmforge run {path}           # data, tokenizer, tokenize, train, eval",
            f"fmforge generate {cfg.run_dir} --prompt \"The \"",
            f"fmforge serve {cfg.run_dir}   # an OpenAI-compatible API and a chat page"]


def scan_summary(scan: Scan) -> list[dict[str, Any]]:
    return [{"source": g.name, "type": g.type, "files": len(g.files), "bytes": g.bytes, "filters": g.filters,
             "text_field": g.text_field, "text_column": g.text_column}
            for g in sorted(scan.groups.values(), key=lambda g: -g.bytes)]
