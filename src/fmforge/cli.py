"""The ``fmforge`` command: one sub-command per stage. Thin: parse, call, print.

Heavy modules (torch, tokenizers, pyarrow) are imported inside the commands so
``fmforge --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="fmforge: from raw text to your own foundation model. "
    "`fmforge run CONFIG` runs every stage; each stage also has its own command.",
    pretty_exceptions_enable=False,
    # Docstrings are wrapped at 100 columns in the source; markdown mode joins the
    # lines of a paragraph, so help text reflows to the terminal instead of
    # breaking where the source line did.
    rich_markup_mode="markdown",
)

OverridesArg = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=50 model.n_layers=4")
ForceOpt = typer.Option(False, "--force", help="redo the stage(s) even if up to date")


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    from fmforge.progress import console

    # escaped: a message's own brackets ("pip install 'fmforge[serve]'") are text, not markup
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(config: Path, overrides: Optional[List[str]]):
    from fmforge.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    return _sized(cfg)


def _sized(cfg):
    """``model: auto`` sized for the budget on this machine, and said so before any stage runs."""
    if not cfg.model.auto:
        return cfg
    from fmforge.errors import UserError
    from fmforge.plan.autosize import RECORD, resolve_auto_model
    from fmforge.progress import log

    try:
        cfg, size, reused = resolve_auto_model(cfg)
    except UserError as exc:
        _fail(f"model: auto: {exc}")
    log(f"model: auto → {size.describe()}"
        + (f" [dim](as decided before, {cfg.run_dir / RECORD})[/dim]" if reused else ""))
    for note in size.notes:
        log(f"[yellow]model: auto:[/] {note}")
    return cfg


def _print_outcomes(run, outcomes) -> None:
    from rich.table import Table

    from fmforge.progress import console

    table = Table(title=f"run {run.root}", show_lines=False)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result")
    for o in outcomes:
        shown = {k: v for k, v in o.summary.items() if k != "stage_seconds"}
        result = ", ".join(f"{k}={_fmt(v)}" for k, v in list(shown.items())[:6])
        table.add_row(o.stage, o.status, f"{o.seconds:.1f}s" if o.status == "ran" else "-", result)
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


@contextlib.contextmanager
def _reported(rerun: str):
    """Errors a user can act on (``fmforge.errors.UserError``: a config key, a file,
    input data, a command to run first) become a message and exit code 2, and so
    does a full, read-only or forbidden disk; an interrupt says how to resume;
    anything else is a bug of ours and keeps its traceback."""
    from fmforge.errors import UserError

    try:
        yield
    except KeyboardInterrupt as exc:
        _fail(f"interrupted: {exc}. Rerun {rerun} to resume.", code=130)
    except UserError as exc:
        _fail(str(exc))
    except Exception as exc:
        from fmforge.rundir import storage_failure

        # A full, read-only or forbidden disk (a file we read, or one we write): the
        # user's to fix, not a bug of ours. Only what was raised from such an error
        # counts; a bug raised while handling one keeps its traceback.
        failure = storage_failure(exc)
        if failure is None:
            raise
        _fail(f"{failure}; then rerun {rerun}")


def _needs_data(cfg, config: Path) -> None:
    if cfg.data is None:
        _fail(f"{config} has no data section, which this command needs (a config without one is "
              "for `fmforge finetune` on JSONL examples)")


def _stage_command(stage: str, config: Path, overrides, force: bool) -> None:
    from fmforge.pipeline import prepare_run_dir, run_stage

    cfg = _load(config, overrides)
    _needs_data(cfg, config)
    run = prepare_run_dir(cfg)
    with _reported("the same command"):
        outcome, _ = run_stage(cfg, run, stage, force=force)
    _print_outcomes(run, [outcome])


@app.command()
def init(
    dirs: List[Path] = typer.Argument(..., help="folders of your files (text, code, JSONL, Parquet, CSV, HTML, WARC)"),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="train for this many minutes on this machine (default 10)"),
    budget: Optional[float] = typer.Option(None, "--budget", help="US$ to spend on --gpu devices (sets the step count)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="catalogue key of the GPU the budget buys, e.g. h100-sxm"),
    num_gpus: int = typer.Option(1, "--num-gpus", help="GPUs the budget is spent on"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="where to write the config (default NAME.yaml)"),
    name: Optional[str] = typer.Option(None, "--name", help="the run's name (default: the config's or the folder's)"),
    ladder_run: Optional[Path] = typer.Option(None, "--ladder", help="a run whose fitted ladder law sizes the model"),
    force: bool = typer.Option(False, "--force", help="replace an existing config file"),
) -> None:
    """Write a commented run config for folders of your own files: one source per
    kind of file, and the model and vocabulary sized for the budget."""
    from fmforge.errors import UserError
    from fmforge.init.write import Budget, init_config
    from fmforge.progress import console

    try:
        result = init_config(dirs, output, Budget(minutes=minutes, usd=budget, gpu=gpu, num_gpus=num_gpus),
                             name=name, ladder_run=ladder_run, overwrite=force)
    except UserError as exc:
        _fail(str(exc))
    for group in sorted(result.scan.groups.values(), key=lambda g: -g.bytes):
        where = (f", text field {group.text_field!r} (guessed from {group.guessed_from})" if group.text_field
                 else f", text column {group.text_column!r} (guessed from {group.guessed_from})"
                 if group.text_column else "")
        console.print(f"source {group.name}: {len(group.files):,} {group.type} files, "
                      f"{group.bytes / 1e6:,.1f} MB, filters {group.filters}{where}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"model: {result.size.describe()}", highlight=False)
    for note in result.size.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"wrote {result.config_path}. Next:", highlight=False)
    for command in result.next_commands:
        console.print(f"  {command}", highlight=False, soft_wrap=True)


@app.command()
def run(config: Path = typer.Argument(..., help="the run's YAML config"),
        overrides: Optional[List[str]] = OverridesArg, force: bool = ForceOpt) -> None:
    """Run the whole pipeline: data, tokenizer, tokenize, train, eval (skipping stages
    that are up to date; training resumes from its latest checkpoint)."""
    from fmforge.pipeline import run_pipeline

    cfg = _load(config, overrides)
    _needs_data(cfg, config)
    # The overrides belong to the command to rerun (without them it is another
    # config, whose training would start afresh); --force does not.
    with _reported(f"`{shlex.join(['fmforge', 'run', str(config), *(overrides or [])])}`"):
        run_dir, outcomes = run_pipeline(cfg, force=force)
    _print_outcomes(run_dir, outcomes)
    _print_plan_vs_actual(run_dir)
    _print_headline(cfg, run_dir)
    if (run_dir.root / "report.html").is_file():
        sys.stdout.write(f"report: {run_dir.root / 'report.html'}\n")


def _print_plan_vs_actual(run_dir) -> None:
    from fmforge.errors import UserError
    from fmforge.plan.actual import compare_plan_to_actual
    from fmforge.plan.report import render_actual
    from fmforge.progress import console

    if not run_dir.plan_json.exists():
        return
    try:
        for r in render_actual(compare_plan_to_actual(run_dir.root)):
            console.print(r)
    except UserError as exc:  # PlanError included: a run without a usable plan or metrics
        console.print(f"[yellow]plan vs actual unavailable: {exc}[/yellow]", soft_wrap=True)


def _print_headline(cfg, run_dir) -> None:
    from fmforge.eval.headline import headline, sample
    from fmforge.progress import console

    line = headline(run_dir)
    if line:
        console.print(f"[bold]{line}[/bold]", highlight=False)
    shown = sample(cfg, run_dir)
    if shown is not None:
        how, text = shown
        console.print(f"[bold]sample ({how}):[/bold]")
        console.print(text, markup=False, highlight=False)


@app.command()
def data(config: Path, overrides: Optional[List[str]] = OverridesArg, force: bool = ForceOpt) -> None:
    """Collect, clean, deduplicate, split and mix the sources into parquet shards."""
    _stage_command("data", config, overrides, force)


def _group_with_default(default: str) -> type[typer.core.TyperGroup]:
    """A command group whose first argument, unless it names a sub-command (or asks
    for help), belongs to ``default``: `fmforge tokenizer CONFIG` is `fmforge
    tokenizer train CONFIG`, `fmforge eval RUN` is `fmforge eval heldout RUN`."""

    class Group(typer.core.TyperGroup):
        # Before the group parses its own options, so that an option of the
        # default command may come first (`fmforge tokenizer --force CONFIG`).
        def parse_args(self, ctx, args):
            if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
                args = [default, *args]
            return super().parse_args(ctx, args)

    return Group


tokenizer_app = typer.Typer(rich_markup_mode="markdown", cls=_group_with_default("train"), no_args_is_help=True,
                            help="Train the tokenizer (`fmforge tokenizer CONFIG`) and measure it on held-out "
                                 "documents (`fmforge tokenizer eval RUN [--compare OTHER]`).")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(config: Path, overrides: Optional[List[str]] = OverridesArg,
                    force: bool = ForceOpt) -> None:
    """Train the byte-level BPE tokenizer on the training split (or adopt tokenizer.path)."""
    _stage_command("tokenizer", config, overrides, force)


@tokenizer_app.command("eval")
def tokenizer_eval(target: str = typer.Argument(..., help="a run directory, a run name under runs/, or the run's config"),
                   compare: Optional[str] = typer.Option(
                       None, "--compare", help="another tokenizer, side by side: a tokenizer.json, a Hugging Face "
                                               "tokenizer directory, or another run")) -> None:
    """Bytes per token per source, vocabulary usage and round-trip exactness on the held-out
    documents; written to RUN/tokenizer/eval.json."""
    from fmforge.progress import console

    run, _ = _run_and_config(target, None)
    with _reported("the same command"):
        from fmforge.tokenizer.evaluate import EVAL_JSON, evaluate_tokenizers, render_table

        result = evaluate_tokenizers(run, compare)
    console.print(render_table(result))
    console.print(f"written to {run.tokenizer / EVAL_JSON}", highlight=False, soft_wrap=True)


@app.command()
def tokenize(config: Path, overrides: Optional[List[str]] = OverridesArg,
             force: bool = ForceOpt) -> None:
    """Encode the text shards into memory-mapped token files."""
    _stage_command("tokenize", config, overrides, force)


@app.command()
def train(config: Path, overrides: Optional[List[str]] = OverridesArg, force: bool = ForceOpt) -> None:
    """Train the model (resumes from the latest complete checkpoint)."""
    _stage_command("train", config, overrides, force)


@app.command()
def ladder(config: Path, overrides: Optional[List[str]] = OverridesArg,
           sizes: Optional[str] = typer.Option(None, "--sizes", help="rungs as d_model x n_layers, e.g. "
                                               "64x1,64x2,128x2 (default: ladder.sizes, else five sizes "
                                               "below the config's model)"),
           tokens_per_param: Optional[float] = typer.Option(None, "--tokens-per-param",
                                                             help="each rung's tokens per non-embedding "
                                                                  "parameter (default: ladder.tokens_per_param)"),
           minutes: Optional[float] = typer.Option(None, "--minutes", help="a total training budget "
                                                   "shared by the rungs instead of a token rule"),
           force: bool = ForceOpt) -> None:
    """Train a ladder of small models on the run's data and fit the scaling law to
    their held-out bits per byte (RUN/ladder/ladder.json); `fmforge plan` then
    predicts the config's model from it."""
    from fmforge.ladder.run import default_rungs, parse_sizes, run_ladder
    from fmforge.pipeline import prepare_run_dir

    cfg = _load(config, overrides)
    _needs_data(cfg, config)
    lc = cfg.ladder
    if minutes is not None:
        tokens_per_param_used, minutes_used = None, minutes
    elif tokens_per_param is not None:
        tokens_per_param_used, minutes_used = tokens_per_param, None
    else:
        tokens_per_param_used, minutes_used = lc.tokens_per_param, lc.minutes
    with _reported(f"`{shlex.join(['fmforge', 'ladder', str(config), *(overrides or [])])}`"):
        spec = sizes if sizes is not None else lc.sizes
        rungs = parse_sizes(spec) if spec else default_rungs(cfg.resolved_model())
        result = run_ladder(cfg, prepare_run_dir(cfg), rungs, tokens_per_param=tokens_per_param_used,
                            minutes=minutes_used, force=force, samples=lc.samples)
    _print_ladder(result)


@app.command()
def datamix(config: Path, overrides: Optional[List[str]] = OverridesArg,
            try_: Optional[List[str]] = typer.Option(None, "--try", help="a variant per value of a data key, e.g. "
                                                     "data.sources.1.weight=0.5,2 (repeatable)"),
            ablate_sources: bool = typer.Option(False, "--ablate-sources", help="also the mixture without each "
                                                "source in turn: what each source is worth"),
            without: Optional[List[str]] = typer.Option(None, "--without", help="also the mixture without this "
                                                        "source (repeatable; --ablate-sources: every source)"),
            weights_grid: bool = typer.Option(False, "--weights-grid", help="also each source's weight x0.5 and "
                                              "x2, one source at a time"),
            seeds: Optional[int] = typer.Option(None, "--seeds", help="proxies per variant, at least 2 "
                                                "(default: datamix.seeds, 2)"),
            target: Optional[List[str]] = typer.Option(None, "--target", help="heldout (the base run's held-out "
                                                       "split), source:NAME, or your own files (repeatable)"),
            size: Optional[str] = typer.Option(None, "--size", help="the proxy model, d_model x n_layers, e.g. "
                                               "64x2 (default: the ladder's smallest rung of 2+ layers)"),
            tokens_per_param: Optional[float] = typer.Option(None, "--tokens-per-param", help="each proxy's tokens "
                                                             "per non-embedding parameter (default 20)"),
            minutes: Optional[float] = typer.Option(None, "--minutes", help="a total training time shared by all "
                                                    "the proxies instead"),
            write_best: Optional[Path] = typer.Option(None, "--write-best", help="write the config with the "
                                                      "winning variant's changes to this YAML file"),
            price_only: bool = typer.Option(False, "--price-only", help="print the experiment's price and stop"),
            force: bool = ForceOpt) -> None:
    """Which data? Train small proxy models on variants of the run's data (other weights,
    filters, a source left out), score them on one target in bits per byte, and say which
    differences exceed the seed-to-seed noise (RUN/datamix/datamix.json)."""
    from fmforge.ladder.datamix import Budget, proxy_rung, render, run_datamix
    from fmforge.ladder.target import parse_target
    from fmforge.ladder.variants import best_comment, collect, write_best as write_config
    from fmforge.pipeline import prepare_run_dir, run_stage
    from fmforge.progress import console

    cfg = _load(config, overrides)
    _needs_data(cfg, config)
    dc = cfg.datamix
    run = prepare_run_dir(cfg)
    command = shlex.join(["fmforge", "datamix", *sys.argv[2:]]) if sys.argv[1:2] == ["datamix"] \
        else f"fmforge datamix {config}"
    with _reported(f"`{command}`"):
        # The variants are compared with the base run's data, split and tokenizer:
        # a fresh config gets those stages (not the base's model). A base that has
        # them is used as it is (one built from other files is refused below, not
        # rebuilt under a model trained on it).
        missing = [s for s in ("data", "tokenizer", "tokenize") if run.stage_record(s) is None]
        if missing:
            _print_outcomes(run, [run_stage(cfg, run, stage)[0] for stage in missing])
        if minutes is not None:
            budget = Budget(tokens_per_param=None, minutes=minutes)
        elif tokens_per_param is not None:
            budget = Budget(tokens_per_param=tokens_per_param)
        else:
            budget = Budget(tokens_per_param=dc.tokens_per_param, minutes=dc.minutes)
        found = collect(cfg, try_ if try_ else dc.variants, ablate_sources or dc.ablate_sources,
                        weights_grid or dc.weights_grid, without=without or ())
        aim = parse_target(target if target else dc.target, cfg.config_dir)
        result = run_datamix(cfg, run, found.variants, rung=proxy_rung(cfg, size or dc.size),
                             budget=budget, seeds=seeds if seeds is not None else dc.seeds, target=aim,
                             force=force, price_only=price_only, notes=found.notes)
        if price_only:
            return
        for r in render(result):
            console.print(r)
        if write_best is not None:
            best = next((v for v in found.variants if v.name == result["best"]), None)
            row = next((r for r in result["variants"] if r["name"] == result["best"]), None)
            write_config(config, overrides or [], best, write_best,
                         best_comment(command, aim.label, row, result["variants"][0]["bits_per_byte"],
                                      result["noise"]["threshold"], len(result["proxy"]["seeds"])))
            console.print(f"{write_best}: " + (f"the config with {best.name}" if best else
                                               "no variant beat the base beyond the seed noise: the base "
                                               "config, unchanged, with a comment saying so"))


def _print_ladder(result: dict) -> None:
    from rich.table import Table

    from fmforge.plan.scaling import ScalingLaw
    from fmforge.progress import console

    table = Table(title="ladder: held-out bits per byte by size", title_justify="left")
    for col in ("rung", "non-emb. params", "tokens", "epochs", "bits/byte", "fit"):
        table.add_column(col, justify="left" if col == "rung" else "right")
    law = ScalingLaw.from_dict(result["law"])
    for r in result["rungs"]:
        fit = law.predict(r["non_embedding_params"], None if law.one_variable else r["tokens"])
        table.add_row(r["name"], f"{r['non_embedding_params']:,}", f"{r['tokens']:,}",
                      f"{r['epochs']:.2g}" if r.get("epochs") is not None else "-",
                      f"{r['bits_per_byte']:.4f}", f"{fit:.4f}")
    console.print(table)
    t = result.get("target", {})
    if "bits_per_byte" in t:
        lo, hi = t.get("interval_90", [None, None])
        console.print(f"the config's model ({t['non_embedding_params']:,} non-embedding parameters, "
                      f"{t.get('extrapolation', 0):g}x the largest rung): predicted "
                      f"{t['bits_per_byte']:.4f} bits/byte"
                      + (f" (90% interval {lo:.4f}-{hi:.4f})" if lo is not None else ""))


eval_app = typer.Typer(rich_markup_mode="markdown", cls=_group_with_default("heldout"), no_args_is_help=True,
                       help="Held-out evaluation (`fmforge eval RUN [--step N]`) and lm-eval benchmarks "
                            "(`fmforge eval harness RUN --tasks ...`).")
app.add_typer(eval_app, name="eval")


def _run_and_config(target: str, overrides):
    """A run given as a config file, a run directory or a name under runs/, with its config."""
    from fmforge.errors import UserError
    from fmforge.pipeline import prepare_run_dir
    from fmforge.rundir import resolve_run

    path = Path(target)
    if path.is_file():
        cfg = _load(path, overrides)
        return prepare_run_dir(cfg), cfg
    try:
        run = resolve_run(target)
    except UserError as exc:
        _fail(str(exc))
    return run, _load(run.config, overrides)


@eval_app.command("heldout")
def eval_heldout(target: str = typer.Argument(..., help="a run directory, a run name under runs/, or the run's config"),
                 overrides: Optional[List[str]] = OverridesArg, force: bool = ForceOpt,
                 step: Optional[int] = typer.Option(None, "--step", help="evaluate this checkpoint (default: the latest)"),
                 against: Optional[List[str]] = typer.Option(
                     None, "--against", help="also score these models on the run's held-out bytes: a Hugging "
                     "Face causal LM directory, a PEFT adapter directory or another fmforge run "
                     "(--against A B C, or the flag repeated)"),
                 stride: Optional[int] = typer.Option(None, "--stride", min=1, help="with --against: slide each "
                                                      "candidate's window by this many tokens"),
                 max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1, help="with --against: score "
                                                         "about this many held-out bytes, each source its share"),
                 device: str = typer.Option("auto", "--device", help="with --against: where candidates run"),
                 dtype: str = typer.Option("float32", "--dtype", help="with --against: float32 (every row's "
                                           "exact figure) or bfloat16 (faster on a GPU; every candidate and the "
                                           "run itself then in bf16)")) -> None:
    """Held-out loss, perplexity and bits per byte, overall and per source, beside gzip -9
    and xz -9e on the same bytes; appended to eval.json by step. With --against, other
    models' bits per byte on exactly those bytes (eval.json's "against")."""
    from fmforge.eval.results import read_eval
    from fmforge.pipeline import locked, run_stage

    overrides = list(overrides or [])
    if against:  # `--against A B C`: the directories after the first arrive as positionals
        against = list(against) + [o for o in overrides if "=" not in o]
        overrides = [o for o in overrides if "=" in o]
    run, cfg = _run_and_config(target, overrides)
    with _reported("the same command"):
        if step is None:
            outcome, _ = run_stage(cfg, run, "eval", force=force)
            _print_outcomes(run, [outcome])
        else:
            from fmforge.eval.stage import run_eval_stage

            with locked(run, f"fmforge eval --step {step}"):
                run_eval_stage(cfg, run, step=step)
        _print_heldout(read_eval(run), step)
        if against:
            from fmforge.eval.against import evaluate_against
            from fmforge.train.device import pick_device

            with locked(run, "fmforge eval --against"):
                scored = evaluate_against(run, against, pick_device(device), stride=stride,
                                          max_bytes=max_bytes, batch_size=cfg.eval.batch_size, dtype=dtype)
            _print_against(read_eval(run), list(scored), run.root)


def _print_against(ev: dict, names: list[str], run_root: Optional[Path] = None) -> None:
    """Each candidate beside the run's own model and the compressors, by source, with
    how each was scored (its document convention and precision)."""
    from rich.table import Table

    from fmforge.progress import console

    found = ev.get("against", {})
    sources = sorted(ev.get("per_source", {}))
    table = Table(title="held-out bits per byte: the run's model, other models, compressors")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("scored as")
    for col in ("overall", *sources):
        table.add_column(col, justify="right")
    per = ev.get("per_source", {})
    own = str(Path(run_root).resolve()) if run_root is not None else None
    # In bf16 the run was scored as a candidate too: its row shows that figure, in the table's precision.
    again = next((n for n in names if own and found.get(n, {}).get("path") == own
                  and found[n].get("dtype", "float32") != "float32"), None)

    def scored_as(entry: dict) -> str:
        conv = entry.get("convention") or {}
        sep = conv.get("separator") or "eos"
        shape = f"{conv['bos_token']} doc {sep}" if conv.get("bos") else f"doc {sep}"
        return f"{shape}, {entry.get('dtype', 'float32')}"

    if again:
        r = found[again]
        table.add_row("this run (step " + str(ev.get("step")) + ")", "", scored_as(r), _fmt(r["bits_per_byte"]),
                      *(_fmt(r["per_source"].get(s, {}).get("bits_per_byte")) for s in sources))
    else:
        step = (ev.get("steps") or {}).get(str(ev.get("step"))) or {}
        table.add_row("this run (step " + str(ev.get("step")) + ")", "", scored_as(step),
                      _fmt(ev.get("bits_per_byte")), *(_fmt(per[s].get("bits_per_byte")) for s in sources))
    for name in names:
        r = found.get(name)
        if r is None or name == again:
            continue
        table.add_row(name, f"{r['params']:,}", scored_as(r), _fmt(r["bits_per_byte"]),
                      *(_fmt(r["per_source"].get(s, {}).get("bits_per_byte")) for s in sources))
    for label, key in (("gzip -9", "gzip_bits_per_byte"), ("xz -9e", "xz_bits_per_byte")):
        table.add_row(label, "", "", _fmt(ev.get(key)), *(_fmt(per[s].get(key)) for s in sources))
    console.print(table)
    bos = any((found.get(n, {}).get("convention") or {}).get("bos") for n in names)
    console.print("overall: the sum over the per-source streams (their nats over their bytes) for every row; "
                  "\"doc\" is each held-out document, special-token text in it encoded as text"
                  + ("; a beginning-of-sequence token also opens every window and is never scored" if bos else ""),
                  style="dim")
    if any(found.get(n, {}).get("max_bytes") for n in names):
        console.print("candidates were scored on a --max-bytes share of the held-out bytes; "
                      + ("the compressors" if again else "the run's model and the compressors")
                      + " on all of them", style="dim")


@eval_app.command("chat")
def eval_chat(model: str = typer.Argument(..., help="a PEFT adapter directory, a merged or any Hugging Face causal LM directory"),
              data: str = typer.Argument(..., help="held-out chat or prompt/completion JSONL"),
              base: Optional[str] = typer.Option(None, "--base", help="the adapter's base model directory (default: as the adapter records it)"),
              accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="also greedy-decode each answer and count exact matches")) -> None:
    """Held-out assistant-token loss (and greedy accuracy) of a fine-tuned model on chat
    data: the same as `fmforge finetune eval`."""
    import json

    _require_finetune()
    from fmforge.finetune.evaluate import evaluate_model

    with _reported("the same command"):
        result = evaluate_model(model, data, base=base, device="auto", accuracy=accuracy, max_new_tokens=64)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def _print_heldout(ev: dict, step: Optional[int]) -> None:
    from rich.table import Table

    from fmforge.progress import console

    entry = (ev.get("steps") or {}).get(str(step if step is not None else ev.get("step")))
    if not entry:
        return
    table = Table(title=f"held-out, step {step if step is not None else ev.get('step')} "
                        f"(window {entry.get('window')}, stride {entry.get('stride')}): bits per byte")
    for col in ("source", "model", "gzip -9", "xz -9e", "loss", "perplexity", "bytes"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, r in [("overall", entry["overall"]), *entry["per_source"].items()]:
        table.add_row(name, *(_fmt(r.get(k)) for k in ("bits_per_byte", "gzip_bits_per_byte", "xz_bits_per_byte",
                                                        "loss", "perplexity", "bytes")))
    console.print(table)


@eval_app.command("harness")
def eval_harness(run: str = typer.Argument(..., help="run directory, or a run name under runs/"),
                 tasks: str = typer.Option(..., "--tasks", help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy"),
                 num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0),
                 limit: Optional[float] = typer.Option(None, "--limit", help="at most N examples per task (or a fraction < 1)"),
                 batch_size: int = typer.Option(8, "--batch-size", min=1),
                 step: Optional[int] = typer.Option(None, "--step", help="this checkpoint (default: the latest)"),
                 include_path: Optional[List[str]] = typer.Option(None, "--include-path",
                                                                  help="a directory of lm-eval task YAML files (repeatable)"),
                 device: str = typer.Option("auto", "--device")) -> None:
    """Standard benchmarks through lm-evaluation-harness, in-process; prints lm-eval's
    table and stores the results in eval.json. Nothing downloads: task data must be local."""
    from fmforge.rundir import resolve_run

    with _reported("the same command"):
        try:
            from fmforge.eval.harness import run_harness
        except ImportError as exc:
            _fail(f"lm-eval is not installed ({exc}): pip install 'fmforge[eval]'")
        out = run_harness(resolve_run(run), [t.strip() for t in tasks.split(",") if t.strip()],
                          num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device,
                          step=step, include_path=include_path)
    sys.stdout.write(out["table"] + "\n")


@app.command()
def report(run: str = typer.Argument(..., help="run directory, or a run name under runs/"),
           out: Optional[Path] = typer.Option(None, "--out", help="where to write (default: RUN/report.html)"),
           device: str = typer.Option("auto", "--device")) -> None:
    """The run report: training curves, data card, held-out and lm-eval results, plan
    against actual and sample completions, in one self-contained HTML file."""
    from fmforge.pipeline import write_run_report
    from fmforge.rundir import resolve_run

    with _reported("the same command"):
        path = write_run_report(resolve_run(run), out=out, device=device)
    sys.stdout.write(f"{path}\n")


@app.command()
def compare(runs: List[str] = typer.Argument(..., help="two or more run directories or names under runs/"),
            out: Path = typer.Option(Path("compare.html"), "--out", help="the HTML file to write")) -> None:
    """Runs on shared axes (by tokens seen) with a table of final figures, in one HTML file."""
    from fmforge.eval.compare import compare_runs
    from fmforge.rundir import resolve_run

    with _reported("the same command"):
        path = compare_runs([resolve_run(r) for r in runs], out)
    sys.stdout.write(f"{path}\n")


checkpoint_app = typer.Typer(rich_markup_mode="markdown", help="Work with a run's checkpoints.", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("consolidate")
def checkpoint_consolidate(
    run: str = typer.Argument(..., help="run directory, or a run name under runs/"),
    step: Optional[int] = typer.Option(None, "--step", help="which checkpoint (default: the latest)"),
) -> None:
    """Turn a sharded (FSDP) checkpoint into one model.safetensors beside it."""
    from fmforge.errors import UserError
    from fmforge.inference.loading import consolidate_checkpoint
    from fmforge.rundir import resolve_run

    try:
        out = consolidate_checkpoint(resolve_run(run), step)
    except UserError as exc:
        _fail(str(exc))
    sys.stdout.write(f"{out}\n")


def _run_of(path: str, tmp: Path):
    """A run directory for ``path``: a run as it is; a Hugging Face model directory
    imported into ``tmp``; a PEFT adapter merged into its base first."""
    from fmforge.rundir import resolve_run

    target = Path(path)
    if (target / "adapter_config.json").is_file():
        _require_finetune()
        from fmforge.finetune.merge import merge_adapter

        target = merge_adapter(target, tmp / "merged")
    if (target / "config.json").is_file() and not (target / "config.yaml").is_file():
        from fmforge.export.hf import import_hf

        return import_hf(target, tmp / (Path(path).resolve().name or "model"))  # weights into fmforge's model
    return resolve_run(path)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed on a command line as the characters they
    name (a shell passes "\\n" through as a backslash and an n); any other
    backslash stays as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


@app.command()
def generate(
    run: str = typer.Argument(..., help="run directory, or a run name under runs/, or a Hugging "
                                        "Face model directory, or a PEFT adapter directory"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="text to continue; \\n, \\t and \\\\ "
                                                         "are a newline, a tab and a backslash"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=0),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0,
                                      help="0 is greedy and deterministic"),
    top_k: Optional[int] = typer.Option(50, "--top-k", min=1),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0,
                                          help="nucleus sampling: keep the likeliest tokens "
                                               "whose probability reaches this"),
    stop: Optional[List[str]] = typer.Option(None, "--stop",
                                             help="stop before this text (repeatable; escapes "
                                                  "as in --prompt)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="make sampling reproducible"),
    truncate: bool = typer.Option(False, "--truncate", help="keep the last tokens of a prompt "
                                  "too long for the context instead of refusing it"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Sample a completion from the run's latest checkpoint; prints only the completion.

    A prompt longer than the context (model.seq_len minus --max-new-tokens) is
    refused with the lengths, or keeps its last tokens with --truncate."""
    import tempfile

    from fmforge.errors import UserError
    from fmforge.inference.engine import Engine, GenerationRequest
    from fmforge.inference.loading import load_trained

    with tempfile.TemporaryDirectory(prefix="fmforge-generate-") as tmp:
        try:
            trained = load_trained(_run_of(run, Path(tmp)), device=device)
        except UserError as exc:
            _fail(str(exc))
    try:
        request = GenerationRequest(prompt=unescape(prompt), max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                    stop=[unescape(s) for s in stop or []],
                                    truncate="left" if truncate else "error")
        text = Engine(trained, max_batch=1).generate([request])[0].text
    except UserError as exc:
        _fail(str(exc))
    sys.stdout.write(text + "\n")


@app.command()
def plan(
    config: Optional[Path] = typer.Argument(None, help="a run config to plan (optional)"),
    overrides: Optional[List[str]] = OverridesArg,
    params: Optional[float] = typer.Option(None, "--params", help="model parameters, e.g. 7e9"),
    tokens: Optional[float] = typer.Option(None, "--tokens", help="training tokens, e.g. 2e12"),
    hf_config: Optional[Path] = typer.Option(None, "--hf-config", help="architecture from a Hugging Face config.json"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="catalogue key, e.g. h100-sxm, a100-80gb, cpu"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus"),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="model FLOPs utilisation; default by model size"),
    price: Optional[float] = typer.Option(None, "--price", help="$ per GPU-hour (overrides the catalogue)"),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | autocast | float32"),
    checkpointing: Optional[bool] = typer.Option(None, "--checkpointing/--no-checkpointing",
                                                 help="activation checkpointing (default: the config's "
                                                      "train.activation_checkpointing, else off)"),
    strategy: Optional[str] = typer.Option(None, "--strategy",
                                           help="ddp | fsdp (default: the config's train.parallel when it "
                                                "sets one, else what fits)"),
    convention: str = typer.Option("palm", "--convention", help="FLOPs convention: palm | kaplan | 6nd"),
    budget: Optional[float] = typer.Option(None, "--budget", help="size a model for this many dollars"),
    gpu_hours: Optional[float] = typer.Option(None, "--gpu-hours", help="size a model for these GPU-hours"),
    data_tokens: Optional[float] = typer.Option(None, "--data-tokens", help="tokens of data you have"),
    run: Optional[str] = typer.Option(None, "--run", help="read the data you have from this run"),
    api_price: Optional[float] = typer.Option(None, "--api-price", help="$ per million tokens of the API you would buy"),
    monthly_tokens: Optional[float] = typer.Option(None, "--monthly-tokens", help="tokens a month you would serve/buy"),
    base_params: Optional[float] = typer.Option(None, "--base-params", help="size of the model you would customize"),
    base_hf_config: Optional[Path] = typer.Option(None, "--base-hf-config", help="config.json of the model you would customize"),
    lora_epochs: float = typer.Option(2.0, "--lora-epochs"),
    horizon_months: int = typer.Option(12, "--horizon-months"),
    actual: Optional[str] = typer.Option(None, "--actual", help="compare a finished run with its plan"),
    decide: bool = typer.Option(False, "--decide", help="with a CONFIG: quality beside cost: the run's model, "
                                "models scored with `fmforge eval RUN --against` and the ladder's predictions"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (stable keys) instead of tables"),
) -> None:
    """What a run will cost (FLOPs, memory per GPU, GPU-hours, dollars), what size of
    model a budget buys, whether to train, customize or buy — and, after a run,
    the plan beside what was measured."""
    options = {k: v for k, v in locals().items() if k != "as_json"}  # the parameters, before any import
    import json

    from fmforge.errors import UserError
    from fmforge.plan.command import PlanOptions, plan_command

    try:
        out = plan_command(PlanOptions(**{**options, "overrides": overrides or []}))
    except UserError as exc:  # PlanError, ConfigError, HardwareError, ArchitectureError ...
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(out.data, indent=2, default=str) + "\n")
    else:
        from rich.console import Console

        stdout = Console()  # the plan is the command's result: stdout, not stderr
        for r in out.renderables:
            stdout.print(r)


export_app = typer.Typer(rich_markup_mode="markdown", help="Export a run's latest checkpoint (Hugging Face, GGUF).",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
import_app = typer.Typer(rich_markup_mode="markdown", help="Make a run directory from another format.", no_args_is_help=True)
app.add_typer(import_app, name="import")
RunArg = typer.Argument(..., help="run directory, or a run name under runs/")


@export_app.command("hf")
def export_hf_command(run: str = RunArg,
                      out_dir: Path = typer.Argument(..., help="directory to write (replaced whole)"),
                      card_paths: bool = typer.Option(False, "--card-paths", help="let the model card (README.md) "
                                                      "name this machine's paths: the run, the data roots")) -> None:
    """A Hugging Face LlamaForCausalLM directory (config, safetensors, tokenizer) for
    transformers and vLLM, with its model card (README.md)."""
    from fmforge.export.hf import export_hf
    from fmforge.pipeline import plan_figures
    from fmforge.rundir import resolve_run

    with _reported("the same command"):
        try:
            run_dir = resolve_run(run)
            plan_actual, decision = plan_figures(run_dir)
            out = export_hf(run_dir, out_dir, card_paths=card_paths, plan_actual=plan_actual, decision=decision)
        except FileExistsError as exc:
            _fail(str(exc))
    sys.stdout.write(f"{out}\n")


@export_app.command("gguf")
def export_gguf_command(run: str = RunArg,
                        out: Path = typer.Argument(..., help="the .gguf file to write"),
                        dtype: str = typer.Option("f16", "--dtype", help="f32 | f16 | q8_0")) -> None:
    """One GGUF file in llama.cpp's Llama layout (`llama-cli -m OUT.gguf -p ...`)."""
    from fmforge.export.gguf import export_gguf
    from fmforge.rundir import resolve_run

    with _reported("the same command"):
        try:
            path = export_gguf(resolve_run(run), out, dtype)
        except ImportError as exc:
            _fail(str(exc))
    sys.stdout.write(f"{path}\n")


@import_app.command("hf")
def import_hf_command(hf_dir: Path = typer.Argument(..., help="a Llama checkpoint on local disk"),
                      run: Path = typer.Argument(..., help="the new run directory")) -> None:
    """A Llama-family Hugging Face checkpoint (config.json, safetensors, tokenizer.json)
    becomes a run directory that `fmforge generate` and the server read."""
    from fmforge.export.hf import import_hf

    with _reported("the same command"):
        try:
            out = import_hf(hf_dir, run)
        except FileExistsError as exc:
            _fail(str(exc))
    sys.stdout.write(f"{out.root}\n")


@app.command()
def serve(
    path: str = typer.Argument(..., help="a run directory (or name under runs/), or an exported "
                                         "Hugging Face directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="FMFORGE_API_KEY",
                                          help="require 'Authorization: Bearer KEY' (or FMFORGE_API_KEY)"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model id clients send "
                                             "(default: the run's or directory's name)"),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="sequences decoded together"),
    max_queue: int = typer.Option(64, "--max-queue", min=0,
                                  help="sequences that may wait for a slot beyond --max-batch; "
                                       "past that, requests get 429 with Retry-After"),
    stream_keepalive: float = typer.Option(15.0, "--stream-keepalive", min=0,
                                           help="seconds of silence on a stream before a "
                                                "': keep-alive' comment (0: never)"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Serve a model behind an OpenAI-compatible API (/v1/completions,
    /v1/chat/completions, /v1/models) with a chat page at /. Exits with status 1
    if its generation worker fails beyond repair (see docs/serving.md)."""
    import tempfile

    from fmforge.errors import UserError, require

    try:
        for module in ("fastapi", "uvicorn", "jinja2"):
            require(module, "serve", "fmforge serve")
    except UserError as exc:
        _fail(str(exc))
    from fmforge.inference.loading import load_trained
    from fmforge.serve.server import WorkerFailed
    from fmforge.serve.server import serve as run_server

    target = Path(path)
    with tempfile.TemporaryDirectory(prefix="fmforge-serve-") as tmp:
        try:
            run_dir = _run_of(path, Path(tmp))
            trained = load_trained(run_dir, device=device)
        except UserError as exc:
            _fail(str(exc))
        try:
            run_server(trained, model_name or target.resolve().name, host=host, port=port,
                       api_key=api_key, tokenizer_dir=run_dir.tokenizer, max_batch=max_batch,
                       max_queue=max_queue, keepalive_s=stream_keepalive)
        except WorkerFailed as exc:
            _fail(str(exc), code=1)


def main() -> None:
    import signal

    def terminate(signum, frame):
        # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C, so atomic
        # writes clean up after themselves; training installs its own handler
        # that first saves a checkpoint.
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, terminate)
    app()


finetune_app = typer.Typer(
    rich_markup_mode="markdown", cls=_group_with_default("train"), no_args_is_help=True,
    help="Customize a pretrained Hugging Face model (LoRA, QLoRA, full, continued pretraining): "
         "`fmforge finetune CONFIG [key=value ...]` trains per the config's finetune section; "
         "`merge` and `eval` below.")
app.add_typer(finetune_app, name="finetune")
BaseOpt = typer.Option(None, "--base", help="the base model directory (default: the one the adapter records)")


def _require_finetune() -> None:
    from fmforge.errors import UserError, require

    try:
        for module in ("transformers", "peft"):
            require(module, "finetune", "fmforge finetune")
    except UserError as exc:
        _fail(str(exc))


@finetune_app.command("train")
def finetune_train(config: Path, overrides: Optional[List[str]] = OverridesArg,
                   force: bool = typer.Option(False, "--force", help="start afresh instead of resuming")) -> None:
    """Train per the config's finetune section (`fmforge finetune CONFIG` for short)."""
    cfg = _load(config, overrides)
    if cfg.finetune is None:
        _fail(f"{config} has no finetune section: see docs/finetune.md")
    _require_finetune()
    from fmforge.export.card import write_finetune_card
    from fmforge.export.hf import export_hf
    from fmforge.finetune.stage import run_finetune
    from fmforge.progress import console
    from fmforge.rundir import RunDir, run_lock

    def export_run(run_dir: Path, out: Path) -> Path:
        return export_hf(RunDir(run_dir), out)

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with _reported(f"`fmforge finetune {config}`"):
        with run_lock(cfg.run_dir, "finetune"):
            summary = run_finetune(cfg, fresh=force, export_run=export_run, write_card=write_finetune_card)
    shown = {k: summary.get(k) for k in ("method", "trainable_params", "trainable_share", "steps",
                                         "first_loss", "final_loss", "val_loss", "tokens_per_s",
                                         "wall_s", "output")}
    console.print(", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), highlight=False, soft_wrap=True)
    sys.stdout.write(f"{summary['output']}\n")


@finetune_app.command("merge")
def finetune_merge(adapter: str = typer.Argument(..., help="a PEFT adapter directory"),
                   out_dir: str = typer.Argument(..., help="where the merged model is written"),
                   base: Optional[Path] = BaseOpt) -> None:
    """Base + adapter as one standalone Hugging Face model."""
    _require_finetune()
    from fmforge.export.card import write_merged_card
    from fmforge.finetune.merge import merge_adapter

    with _reported("the same command"):
        try:
            out = merge_adapter(adapter, out_dir, base, write_card=lambda tmp: write_merged_card(
                tmp, adapter, base, out_name=Path(out_dir).name))
        except FileExistsError as exc:
            _fail(str(exc))
    sys.stdout.write(f"{out}\n")


@finetune_app.command("eval")
def finetune_eval(model: str = typer.Argument(..., help="an adapter, a merged or a base model directory"),
                  data: str = typer.Argument(..., help="held-out chat or prompt/completion JSONL"),
                  base: Optional[Path] = BaseOpt,
                  max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="longest greedy answer"),
                  accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy",
                                                help="also answer each example greedily and count exact matches"),
                  device: str = typer.Option("auto", "--device", help="cpu, cuda, mps or auto")) -> None:
    """Held-out assistant-token loss (and greedy accuracy) of an adapter, merged or base model."""
    import json

    _require_finetune()
    from fmforge.finetune.evaluate import evaluate_model

    with _reported("the same command"):
        result = evaluate_model(model, data, base=base, device=device, accuracy=accuracy,
                                max_new_tokens=max_new_tokens)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
