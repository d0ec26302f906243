"""The model card (``README.md``) every export writes, through ``huggingface_hub``'s
``ModelCard`` / ``ModelCardData`` so the Hub renders and indexes it as its own.

YAML metadata: ``library_name``, ``pipeline_tag: text-generation``, ``tags``
(``fmforge`` among them), ``license`` and ``base_model`` where known, and a
``model-index`` holding the held-out bits per byte, overall and per source, and any
lm-eval results of the exported checkpoint, exactly as ``eval.json`` has them. A
figure is reported only for the checkpoint it was measured on: a card of a model
nobody evaluated says so.

The body, for a person: what the model is, what it was trained on (the data
card), how (the train stage's record, plan against actual), how well (the
held-out table beside gzip and xz, other models scored on the same bytes), how
to load it, and its limits. It names no path of the machine it was made on
(``paths=True`` adds a provenance section that does).

Three cards: ``run_card`` (``fmforge export hf``), ``write_finetune_card`` (the
adapter or whole model ``fmforge finetune`` writes) and ``write_merged_card``
(``fmforge finetune merge``); the fine-tune stage and the merge call the last two
through the callables the CLI hands them (finetune and export are siblings). Each reads only artifacts: the run directory
(``config.yaml``, ``data/data_card.json``, ``tokens/meta.json``, ``stages.json``,
``eval.json``, the checkpoint's ``trainer_state.json``) or the fine-tune's
(``config.yaml``, ``summary.json``, ``adapter_config.json``). The planner's figures
(plan against actual, the train/customize/buy comparison) come in as the dicts the
report takes, from the caller: the planner and the exports are siblings.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fmforge.config import ModelConfig, RunConfig, config_from_dict
from fmforge.rundir import RunDir, against_stale, atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD = "README.md"
HELDOUT = "fmforge-heldout"  # the model-index dataset type of a run's own held-out split
PROJECT = "fmforge"


# --------------------------------------------------------------------- helpers


def count(x: float | None) -> str:
    """1.12M, 5.53B: a count with its magnitude."""
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.0f}" if abs(x) >= 100 else (f"${x:,.2f}" if x == 0 or abs(x) >= 0.01 else f"${x:.2g}")


def duration(seconds: float) -> str:
    h = seconds / 3600
    if h >= 48:
        return f"{h / 24:,.1f} days"
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h * 60:.1f} min" if seconds >= 60 else f"{seconds:.3g} s"


def _n(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else (f"{x:,.0f}" if isinstance(x, float) else "-")


def _bpb(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns left-aligned, figures right. A '|'
    in a cell is escaped: GitHub-flavoured Markdown (the Hub's) splits cells on it
    even inside a code span such as `<|endoftext|>`."""
    align = ["---"] * left + ["--:"] * (len(headers) - left)

    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged side artifact: the card leaves its section out, the export goes on


def _config(path: Path) -> RunConfig | None:
    try:
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _assemble(data, body: str, paths: bool, machine_paths: list[str]) -> ModelCard:
    from huggingface_hub import ModelCard

    text = f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"
    if not paths:
        text = _without_paths(text, machine_paths)
    return ModelCard(text)


def _without_paths(text: str, machine_paths: list[str]) -> str:
    """A guard behind the card's own care: any path of this machine that slipped
    into a figure's note (a run, a data root, a base model) becomes ``…``."""
    absolute = {p.rstrip("/\\") for p in machine_paths if p and Path(p).is_absolute()}
    for p in sorted((p for p in absolute if len(p) > 1), key=len, reverse=True):
        text = text.replace(p, "…")
    return text


def write_card(card: ModelCard, out_dir: Path) -> Path:
    path = Path(out_dir) / CARD
    atomic_write_text(path, str(card))
    return path


def base_model_name(path: str | Path) -> str:
    """The name a base model goes by, without the path it lies at here: the Hub id
    of a model in the Hugging Face cache (``models--ORG--NAME/snapshots/...``), the
    name an fmforge export's card gives it, else its directory's name."""
    p = Path(path)
    hub = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots", str(p))
    if hub:
        return f"{hub.group(1)}/{hub.group(2)}"
    if (p / CARD).is_file():
        try:
            from huggingface_hub import ModelCard

            data = ModelCard.load(p / CARD).data
            if PROJECT in (data.tags or []) and data.model_name:
                return str(data.model_name)
        except Exception:  # noqa: BLE001 - someone else's README: fall back to the name
            pass
    return p.name


# ---------------------------------------------------------------- a run's card


class _Run:
    """What a run directory knows, each artifact read once (empty when missing)."""

    def __init__(self, run: RunDir, step: int | None, plan_actual: dict[str, Any] | None = None,
                 decision: dict[str, Any] | None = None):
        self.run = run
        self.plan_actual, self.decision = plan_actual, decision
        self.cfg = _config(run.config)
        self.name = (self.cfg.export.name if self.cfg else None) or (self.cfg.name if self.cfg else run.root.name)
        self.data_card = _read_json(run.data_card)
        self.meta = _read_json(run.tokens / "meta.json")
        self.stages = _read_json(run.stages_json)
        self.plan = _read_json(run.plan_json)
        self.eval = _read_json(run.eval_json)
        self.step = step
        self.imported = False  # the checkpoint is `fmforge import hf`'s (set by run_card)

    def summary(self, stage: str) -> dict[str, Any]:
        return (self.stages.get(stage) or {}).get("summary") or {}

    def evaluation(self) -> dict[str, Any] | None:
        """The held-out evaluation of the exported checkpoint, or None."""
        entry = (self.eval.get("steps") or {}).get(str(self.step))
        return entry if entry and entry.get("overall", {}).get("bits_per_byte") is not None else None

    def harness(self) -> dict[str, Any]:
        return ((self.eval.get("harness") or {}).get(str(self.step)) or {})

    def machine_paths(self) -> list[str]:
        found = [str(self.run.root), str(self.run.root.resolve()), str(Path.home())]
        found += [s.get("root") for s in (self.data_card.get("sources") or {}).values() if s.get("root")]
        found += [r.get("path") for r in (self.eval.get("against") or {}).values() if r.get("path")]
        if self.cfg is not None:
            found.append(str(self.cfg.config_dir) if self.cfg.config_dir else None)
            found.append(str(self.cfg.run_dir))
        return [p for p in found if p]


def _heldout_results(r: _Run, evaluation: dict[str, Any]) -> list:
    from huggingface_hub import EvalResult

    def result(value: float, source: str | None) -> EvalResult:
        return EvalResult(task_type="text-generation", task_name="Language modeling",
                          dataset_type=HELDOUT, dataset_name=f"{r.name} held-out split"
                          + (f" ({source})" if source else ""), dataset_config=source,
                          dataset_split="validation", metric_type="bits_per_byte",
                          metric_name="bits per byte", metric_value=value)

    out = [result(evaluation["overall"]["bits_per_byte"], None)]
    out += [result(v["bits_per_byte"], s) for s, v in sorted((evaluation.get("per_source") or {}).items())
            if v.get("bits_per_byte") is not None]
    return out


def _harness_run(h: dict[str, Any], task: str) -> dict[str, Any]:
    """The ``fmforge eval harness`` run a task's result came from (the results of a
    step merge across runs): the latest that named it, or had it among its samples
    (a group's subtask); else the only run there is; else nothing known."""
    runs = h.get("runs") or []
    named = [run for run in runs if task in (run.get("tasks") or []) or task in (run.get("n_samples") or {})]
    return named[-1] if named else (runs[0] if len(runs) == 1 else {})


def _harness_results(r: _Run) -> list:
    from huggingface_hub import EvalResult

    h = r.harness()
    out = []
    for task, metrics in sorted((h.get("tasks") or {}).items()):
        fewshot = _harness_run(h, task).get("num_fewshot")  # None: the task's own default, not recorded
        # lm-eval indents a group's subtasks in their alias ("  - abstract_algebra")
        alias = str(metrics.get("alias", task)).strip().lstrip("-").strip() or task
        for key, value in sorted(metrics.items()):
            metric, _, filt = key.partition(",")
            if "stderr" in metric or metric == "alias" or not isinstance(value, (int, float)) \
                    or isinstance(value, bool):
                continue
            out.append(EvalResult(
                task_type="text-generation", task_name=alias, dataset_type=task, dataset_name=alias,
                dataset_args={"num_few_shot": fewshot} if fewshot is not None else None,
                metric_type=metric, metric_name=metric if filt in ("", "none") else f"{metric} ({filt})",
                metric_value=value))
    return out


def _model_section(r: _Run, cfg_model, params) -> str:
    tok = r.cfg.tokenizer if r.cfg else None
    vocab = r.meta.get("tokenizer_vocab_size") or r.meta.get("vocab_size") or cfg_model.vocab_size
    kv = cfg_model.kv_heads
    attention = (f"{cfg_model.n_heads} heads of {cfg_model.head_dim}"
                 + (f", {kv} key/value heads (grouped-query)" if kv != cfg_model.n_heads else ""))
    if r.imported:
        tokenizer = "the imported checkpoint's own (not trained by fmforge)"
    elif tok is not None and tok.path:
        tokenizer = "the tokenizer of the model it continues (brought, not trained)"
    elif tok is not None:
        tokenizer = (f"byte-level BPE trained on the run's training text ({PROJECT}, HF `tokenizers`), "
                     f"{'GPT-4' if tok.split == 'gpt4' else 'GPT-2'}'s pre-tokenizer split")
    else:
        tokenizer = "byte-level BPE"
    eos = r.meta.get("eos_token")
    rows = [
        ["architecture", f"Llama (`LlamaForCausalLM`): decoder-only transformer, {cfg_model.n_layers} layers, "
                         f"width {cfg_model.d_model}, {attention}, SwiGLU MLP of {cfg_model.ffn_dim}, "
                         f"RMSNorm, RoPE (θ = {cfg_model.rope_theta:g}), "
                         + ("embeddings tied to the output head" if cfg_model.tie_embeddings
                            else "separate output head")],
        ["parameters", f"{params.total:,} ({count(params.total)}; {params.non_embedding:,} outside the "
                       "embeddings)"],
        ["context", f"{cfg_model.seq_len} tokens"],
        ["tokenizer", tokenizer],
        ["vocabulary", f"{vocab:,} tokens" + (f"; end of document: `{eos}`" if eos else "")],
        ["checkpoint", f"step {r.step}" if r.step is not None else "-"],
        ["weights", "float32 safetensors"],
    ]
    return "## Model\n\n" + _table(["", ""], rows, left=2)


def _data_section(r: _Run) -> str:
    card, meta = r.data_card, r.meta
    if not card.get("sources"):
        return ("## Training data\n\nThis run directory has no data card (`data/data_card.json`): "
                "its weights were not trained from data that fmforge prepared (an imported model?).")
    tokens = (meta.get("per_source") or {}).get("train") or {}
    val_tokens = (meta.get("per_source") or {}).get("val") or {}
    totals = card.get("totals") or {}
    cfg = card.get("config") or {}
    rows_in, rows_mix = [], []
    for name, s in card["sources"].items():
        reasons = ", ".join(f"{k.replace('length:', '')} {v:,}" for k, v in (s.get("dropped_reasons") or {}).items()
                            if v) or "none"
        rows_in.append([f"`{name}`", s.get("type", "-"), _n(s.get("files_read")), _n(s.get("documents_read")),
                        _n(s.get("bytes_read")), reasons, _n(s.get("duplicates")), _n(s.get("kept_documents"))])
        mix = s.get("mixture") or {}
        share = mix.get("share_of_train_bytes")
        rows_mix.append([f"`{name}`", _n(s.get("train_documents")), _n(s.get("train_bytes")),
                         f"{s.get('weight', 1):g}", _n(mix.get("bytes_after")),
                         f"{share:.1%}" if isinstance(share, float) else "-",
                         _n((tokens.get(name) or {}).get("tokens")),
                         f"{_n(s.get('val_documents'))} / {_n(s.get('val_bytes'))} / "
                         f"{_n((val_tokens.get(name) or {}).get('tokens'))}"])
    dedup = card.get("dedup") or {}
    preset = (cfg.get("filters") or {}).get("preset", "none")
    own = {n: s.get("filters") or preset for n, s in card["sources"].items()}
    filters = (f"preset `{preset}`" if set(own.values()) <= {preset} else
               "; ".join(f"`{n}`: `{f}`" for n, f in own.items()))
    val_fraction = cfg.get("val_fraction")
    lines = [
        "## Training data",
        "",
        f"{len(card['sources'])} source{'s' if len(card['sources']) != 1 else ''}, cleaned, filtered and "
        f"deduplicated by fmforge's data stage (the run's `data/data_card.json`). Quality filters: {filters}"
        f". Deduplication: {dedup.get('method', cfg.get('dedup', '-'))}, {_n(dedup.get('duplicates'))} "
        f"duplicate documents removed ({_n(dedup.get('clusters'))} clusters). Documents shorter than "
        f"{cfg.get('min_chars', '-')} characters are dropped.",
        "",
        _table(["source", "type", "files read", "documents read", "bytes read", "dropped (reason, documents)",
                "duplicates removed", "documents kept"], rows_in, left=2),
        "",
        "The mixture: each source's unique training bytes, repeated by its weight; tokens are "
        "of the mixed stream the model trained on. Held out: "
        + (f"{val_fraction:.0%}" if isinstance(val_fraction, (int, float)) else "a share")
        + " of each source's documents, never trained on.",
        "",
        _table(["source", "documents", "unique bytes", "weight", "bytes in the mix", "share", "tokens",
                "held out: documents / bytes / tokens"], rows_mix),
        "",
        f"In all: {_n(totals.get('mixed_train_bytes'))} training bytes, "
        f"{_n(meta.get('train_tokens'))} tokens ({meta.get('train_tokens') and totals.get('mixed_train_bytes') and round(totals['mixed_train_bytes'] / meta['train_tokens'], 2)} "
        f"bytes per token); held out {_n(totals.get('val_bytes'))} bytes, {_n(meta.get('val_tokens'))} tokens.",
    ]
    return "\n".join(lines)


def _training_section(r: _Run) -> str:
    s = r.summary("train")
    if not s:
        return ("## Training\n\nNo training is recorded in this run directory (`stages.json`): the weights "
                "came from elsewhere (`fmforge import hf`) or the record was removed.")
    t = r.cfg.train if r.cfg else None
    n = s.get("processes") or 1
    if str(s.get("device", "")).startswith("cuda"):
        device = f"{n} × {r.plan.get('gpu_name') or 'GPU'}"
    else:
        device = f"{s.get('device', '-').upper()}, {n} process{'es' if n > 1 else ''}"
    rows = [["tokens", f"{_n(s.get('tokens'))} ({s.get('epochs', '-')} epochs of the mixed stream)"],
            ["steps", f"{_n(s.get('steps'))}" + (f" of {t.micro_batch_size * t.grad_accum_steps} × "
                                                  f"{r.cfg.model.seq_len} tokens" if t else "")],
            ["optimizer", f"AdamW, peak learning rate {t.lr:g}, {t.warmup_steps} warmup steps, "
                          f"weight decay {t.weight_decay:g}; {t.dtype}" if t else "-"],
            ["hardware", device],
            ["wall time", duration(s["wall_s"]) if s.get("wall_s") else "-"],
            ["throughput", f"{_n(s.get('tokens_per_s'))} tokens/s"],
            ["final loss", f"train {s.get('final_loss', '-')}, validation {s.get('val_loss', '-')} (nats/token)"]]
    out = ["## Training", "", _table(["", ""], rows, left=2)]
    actual = _plan_vs_actual(r) if r.plan_actual else None
    if actual:
        out += ["", actual]
    return "\n".join(out)


def _plan_vs_actual(r: _Run) -> str:
    """``fmforge plan --actual``'s rows (``compare_plan_to_actual``), those a reader
    of a card cares about: speed, time, money."""
    got = r.plan_actual
    fmt = {"tokens_per_s": lambda v: _n(v), "wall_s": duration, "cost_usd": usd}
    label = {"tokens_per_s": "throughput (tokens/s)", "wall_s": "wall time", "cost_usd": "cost"}
    rows = [[label[row["metric"]], fmt[row["metric"]](row["predicted"]) if row["predicted"] is not None
             else "-", fmt[row["metric"]](row["actual"]) if row["actual"] is not None else "-",
             f"{row['error_pct']:+.0f}%" if row.get("error_pct") is not None else "-"]
            for row in got["rows"] if row["metric"] in fmt]
    price = (r.plan.get("sources") or {}).get("price")
    note = (f"Cost at {usd(r.plan.get('price_per_gpu_hour'))} per device-hour"
            + (f" ({price})" if price else "") + ".")
    return ("Planned before training (`fmforge plan`) against measured:\n\n"
            + _table(["", "planned", "actual", "error"], rows) + "\n\n" + note)


def _evaluation_section(r: _Run, evaluation: dict[str, Any] | None, params) -> str:
    lines = ["## Evaluation", ""]
    sources = sorted((evaluation or r.eval).get("per_source") or {})
    if evaluation is None:
        if r.eval.get("step") is not None:
            lines.append(f"This checkpoint (step {r.step}) has not been evaluated: the run's latest evaluation "
                         f"is of step {r.eval['step']}, another model. Score this one with "
                         f"`fmforge eval {r.run.root.name}`; no figure is given here.")
        else:
            lines.append(f"This model has not been evaluated: no held-out figure is given here. Score it on "
                         f"the run's held-out split with `fmforge eval {r.run.root.name}`, then export again.")
    else:
        lines.append("Bits per byte on the run's held-out split (documents never trained on; lower is better), "
                     "beside two general-purpose compressors on the same bytes. Overall is the sum over the "
                     "sources: their nats over their bytes.")
    against = {n: a for n, a in sorted((r.eval.get("against") or {}).items()) if against_stale(r.run, a) is None}
    if evaluation is not None or against:
        per = (evaluation or {}).get("per_source") or {}
        overall = (evaluation or {}).get("overall") or {}
        head = ["model", "parameters", "overall", *[f"`{s}`" for s in sources]]
        rows = []
        if evaluation is not None:
            rows.append([f"**this model** (step {r.step})", _n(params.total), f"**{_bpb(overall['bits_per_byte'])}**",
                         *[_bpb((per.get(s) or {}).get("bits_per_byte")) for s in sources]])
        for name, a in against.items():
            rows.append([f"{name} (`--against`)", _n(a.get("params")), _bpb(a.get("bits_per_byte")),
                         *[_bpb((a.get("per_source") or {}).get(s, {}).get("bits_per_byte")) for s in sources]])
        ref = overall or r.eval
        ref_per = per or r.eval.get("per_source") or {}
        for label, key in (("gzip -9", "gzip_bits_per_byte"), ("xz -9e", "xz_bits_per_byte")):
            rows.append([label, "", _bpb(ref.get(key)), *[_bpb((ref_per.get(s) or {}).get(key)) for s in sources]])
        lines += ["", _table(head, rows)]
        if evaluation is not None:
            lines += ["", f"Scored on {_n(overall.get('bytes'))} held-out bytes ({_n(overall.get('tokens'))} "
                          f"tokens), window {evaluation.get('window', '-')}, stride {evaluation.get('stride', '-')}, "
                          f"{evaluation.get('dtype', 'float32')}."]
        if against:
            lines += ["", "`--against`: other models scored on exactly these bytes "
                          "(`fmforge eval RUN --against DIR`), each with its own tokenizer."]
    decision = _decision(r.decision) if r.decision else None
    if decision:
        lines += ["", "Train, customize or use as is: the planner's comparison (`fmforge plan --decide`), "
                      "quality beside cost:", "", *decision]
    h = r.harness()
    if h.get("tasks"):
        rows = []
        for res in _harness_results(r):
            n = (_harness_run(h, res.dataset_type).get("n_samples") or {}).get(res.dataset_type) or {}
            examples = (f"{_n(n.get('effective'))} of {_n(n.get('original'))}"
                        if n.get("effective") != n.get("original") else _n(n.get("original")))
            shots = (res.dataset_args or {}).get("num_few_shot")
            rows.append([res.dataset_name, res.metric_name, "task default" if shots is None else shots, examples,
                         f"{res.metric_value:.4f}"])
        lines += ["", f"Downstream tasks (lm-evaluation-harness, step {r.step}; \"x of y\" examples: a `--limit` "
                      "run, scored on part of the task):", "",
                  _table(["task", "metric", "shots", "examples", "value"], rows, left=2)]
    return "\n".join(lines)


def _decision(q: dict[str, Any]) -> list[str]:
    """The planner's quality-beside-cost table (``quality_table``) and its notes."""
    rows = [[row["option"], row["model"], _bpb(row.get("bits_per_byte"))
             + (f" ({row['interval_90'][0]:.3f}-{row['interval_90'][1]:.3f})" if row.get("interval_90") else ""),
             usd(row.get("one_time_usd"))] for row in q["rows"]]
    return [_table(["option", "model", "bits per byte (90% interval)", "one-time cost"], rows, left=2), "",
            *[f"- {n}" for n in q["notes"]]]


def _usage_section(r: _Run, out_name: str) -> str:
    run = shlex.quote(r.run.root.name)
    gguf = shlex.quote((re.sub(r"[^A-Za-z0-9_.-]+", "-", r.name).strip("-.") or r.run.root.name) + ".gguf")
    prompt = (r.cfg.eval.sample_prompt if r.cfg and r.cfg.eval.sample_prompt else "Once upon a time")
    return "\n".join([
        "## How to use",
        "",
        "With transformers (this directory holds `config.json`, `model.safetensors` and the tokenizer):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{out_name}")',
        f'model = AutoModelForCausalLM.from_pretrained("{out_name}")',
        f"ids = tok({prompt!r}, return_tensors=\"pt\").input_ids",
        "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))",
        "```",
        "",
        "With llama.cpp, through a GGUF file made from the run (f32, f16 or q8_0):",
        "",
        "```bash",
        f"fmforge export gguf {run} {gguf} --dtype f16",
        f"llama-cli -m {gguf} -p {json.dumps(prompt.splitlines()[0] if prompt else '')} -n 40 --temp 0 -no-cnv",
        "```",
        "",
        f"vLLM and `fmforge serve` read this directory as it is (`vllm serve {out_name} "
        f"--max-model-len {r.cfg.model.seq_len if r.cfg else 'N'}`).",
    ])


def _limits_section(r: _Run, params, tokens: Any) -> str:
    if r.imported:
        return "\n".join([
            "## Limitations",
            "",
            "- **Origin.** Imported into fmforge from a Hugging Face Llama checkpoint: fmforge did not train "
            "it, and what the original model's card says about its training data, tuning, alignment and "
            "limits carries over.",
            f"- **Context.** It cannot read beyond {r.cfg.model.seq_len if r.cfg else '-'} tokens.",
        ])
    sources = ", ".join(f"`{s}`" for s in (r.data_card.get("sources") or {})) or "its training data"
    return "\n".join([
        "## Limitations",
        "",
        f"- **Size.** {count(params.total)} parameters trained on {count(tokens) if tokens else 'an unknown number of'} "
        "tokens: it continues text in the style of its data; it does not know facts reliably, and it "
        f"cannot read beyond {r.cfg.model.seq_len if r.cfg else '-'} tokens of context.",
        f"- **Data.** It saw only {sources}; on any other kind of text it does worse than the held-out "
        "figures above, which are measured on the same sources.",
        "- **Not aligned.** A pretrained model only: no instruction tuning, no preference tuning (RLHF, DPO), "
        "no safety evaluation. It completes text; it does not follow instructions or refuse harmful requests "
        "unless fine-tuned to (`fmforge finetune`).",
    ])


def _provenance_section(paths: list[tuple[str, str]]) -> str:
    return "## Provenance (paths on the machine that made this card)\n\n" + "\n".join(
        f"- {what}: `{where}`" for what, where in paths)


def run_card(run: RunDir, model: ModelConfig, step: int, out_name: str, paths: bool = False,
             plan_actual: dict[str, Any] | None = None, decision: dict[str, Any] | None = None) -> ModelCard:
    """The card of a run's checkpoint at ``step`` (its model ``model``) exported to a
    directory named ``out_name``. ``plan_actual``, ``decision``: the planner's
    ``compare_plan_to_actual`` and ``quality_table`` of the run, shown when given."""
    from huggingface_hub import ModelCardData

    from fmforge.export.gguf import model_description
    from fmforge.model.counting import count_parameters
    from fmforge.train.checkpoint import list_checkpoints, load_trainer_state

    r = _Run(run, step, plan_actual, decision)
    if r.cfg is None:
        raise ValueError(f"{run.config}: cannot read the run's config for its model card")
    params = count_parameters(model)
    evaluation = r.evaluation()
    results = (_heldout_results(r, evaluation) if evaluation else []) + _harness_results(r)
    export = r.cfg.export
    data = ModelCardData(model_name=r.name, library_name="transformers", pipeline_tag="text-generation",
                         tags=[PROJECT, "llama", "text-generation"], license=export.license,
                         eval_results=results or None)
    state = load_trainer_state(dict(list_checkpoints(run.checkpoints))[step])
    r.imported = "imported_from" in state
    head = [f"# {r.name}", "", export.description or model_description(r.cfg, model, state)]
    facts = [f"by {export.author}" if export.author else None,
             f"license `{export.license}`" if export.license else None,
             f"<{export.source_url}>" if export.source_url else None]
    if any(facts):
        said = "; ".join(f for f in facts if f)
        head += ["", said[0].upper() + said[1:] + "."]  # the user's words as written (not str.capitalize)
    tokens = r.summary("train").get("tokens")
    body = "\n\n".join(["\n".join(head), _model_section(r, model, params), _data_section(r), _training_section(r),
                        _evaluation_section(r, evaluation, params), _usage_section(r, out_name),
                        _limits_section(r, params, tokens)])
    if paths:
        where = [("run directory", str(run.root.resolve()))]
        where += [(f"source `{n}`", f"{s['root']} {' '.join(s.get('patterns') or [])}".strip())
                  for n, s in (r.data_card.get("sources") or {}).items() if s.get("root")]
        where += [(f"`--against` {n}", a["path"]) for n, a in (r.eval.get("against") or {}).items() if a.get("path")]
        body += "\n\n" + _provenance_section(where)
    return _assemble(data, body, paths, r.machine_paths())


# ------------------------------------------------------------ fine-tune cards


_METHODS = {"lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base, LoRA adapters)", "full": "full fine-tuning"}


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    return _read_json(adapter_dir / "adapter_config.json")


def _method_rows(summary: dict[str, Any], cfg: RunConfig | None, adapter: dict[str, Any]) -> list[list[str]]:
    fc = cfg.finetune if cfg else None
    method = summary.get("method") or (fc.method if fc else None) or "lora"
    what = _METHODS.get(method, method)
    if summary.get("train_on") == "tokens":
        what += " (continued pretraining on text)"
    rows = [["method", what]]
    if method != "full":
        r = adapter.get("r") or (fc.lora.r if fc else summary.get("lora_r"))
        alpha = adapter.get("lora_alpha") or (fc.lora.alpha if fc else None)
        dropout = adapter.get("lora_dropout", fc.lora.dropout if fc else None)
        targets = adapter.get("target_modules")
        targets = sorted(targets) if isinstance(targets, list) else targets
        rows.append(["adapters", f"rank r = {r}, alpha = {alpha}, dropout {dropout}; on "
                                 + (", ".join(f"`{t}`" for t in targets) if isinstance(targets, list)
                                    else f"`{targets}`")])
    if summary.get("trainable_params"):
        rows.append(["trained parameters", f"{summary['trainable_params']:,} of {summary.get('total_params', 0):,} "
                                           f"({summary.get('trainable_share', 0):.3%})"])
    if fc is not None:
        rows.append(["schedule", f"AdamW, learning rate {fc.lr:g} ({fc.schedule}), {fc.warmup_steps} warmup steps; "
                                 f"{summary.get('steps', fc.max_steps or '-')} steps of "
                                 f"{fc.micro_batch_size * fc.grad_accum_steps} sequences of up to {fc.seq_len} tokens"])
    if summary.get("tokens"):
        rows.append(["tokens", f"{summary['tokens']:,}"])
    if summary.get("wall_s"):
        rows.append(["hardware, time", f"{summary.get('device', '-')}, {summary.get('dtype', '-')}; "
                                       f"{duration(summary['wall_s'])}"])
    if summary.get("final_loss") is not None:
        rows.append(["loss", f"first {summary.get('first_loss', 0):.4f}, final {summary['final_loss']:.4f}"
                             + (f", held-out {summary['val_loss']:.4f}" if summary.get("val_loss") is not None
                                else "") + " (nats per target token)"])
    return rows


def _data_rows(summary: dict[str, Any], cfg: RunConfig | None, corpus: dict[str, Any] | None = None) -> str:
    fc = cfg.finetune if cfg else None
    if summary.get("train_on") == "tokens":
        text = (f"Text: the run's own token shards (its data section, encoded with the base's tokenizer), "
                f"{_n(summary.get('train_windows'))} training windows of {summary.get('seq_len', '-')} tokens, "
                f"{_n(summary.get('val_tokens'))} held-out tokens.")
        per = ((corpus or {}).get("per_source") or {}).get("train") or {}
        if per:
            text += "\n\n" + _table(["source", "documents", "bytes", "tokens"], [
                [f"`{n}`", _n(v.get("documents")), _n(v.get("bytes")), _n(v.get("tokens"))] for n, v in per.items()])
        return text
    files = [Path(p).name for p in (fc.data if fc else [])]
    val = [Path(p).name for p in (fc.val_data or [])] if fc else []
    lines = [f"Examples from {', '.join(f'`{f}`' for f in files) or 'JSONL files'}"
             + (f", held out: {', '.join(f'`{f}`' for f in val)}" if val else
                (f", {fc.val_fraction:.0%} of them held out" if fc else "")) + ":",
             "",
             _table(["", ""], [
                 ["lines read", _n(summary.get("lines"))],
                 ["bad lines skipped (reported in `bad_lines.jsonl`)", _n(summary.get("bad_lines"))],
                 ["training examples", _n(summary.get("train_examples"))],
                 ["held-out examples", _n(summary.get("val_examples"))],
                 ["target (assistant) tokens", _n(summary.get("train_target_tokens"))],
                 ["chat template", f"`{summary.get('template', '-')}`"],
                 ["packing", "yes" if fc and fc.packing else "no"]], left=2),
             "",
             "The loss covers only the assistant (completion) tokens."]
    return "\n".join(lines)


def _finetune_body(name: str, base: str, kind: str, summary: dict[str, Any], cfg: RunConfig | None,
                   adapter: dict[str, Any], out_name: str, corpus: dict[str, Any] | None) -> str:
    method = summary.get("method") or (cfg.finetune.method if cfg and cfg.finetune else "lora")
    chat = summary.get("train_on") != "tokens"
    what = {"adapter": f"A {_METHODS.get(method, method)} adapter for `{base}`: this directory holds only the "
                       "adapter's weights; load it on the base model.",
            "merged": f"`{base}` with a {_METHODS.get(method, method)} adapter merged into its weights "
                      "(peft's `merge_and_unload`): a standalone model, no adapter needed.",
            "model": f"`{base}` after {_METHODS.get(method, method)}: every weight trained; a standalone model."}[kind]
    if kind == "adapter":
        usage = ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, "
                 "AutoTokenizer", "", f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                 f'model = PeftModel.from_pretrained(base, "{out_name}")',
                 f'tok = AutoTokenizer.from_pretrained("{out_name}")   # with the chat template it was trained with',
                 "```", "", f"or `fmforge generate {out_name} --prompt ...`, `fmforge serve {out_name}`; "
                 f"`fmforge finetune merge {out_name} OUT` writes base + adapter as one model."]
    else:
        usage = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 f'tok = AutoTokenizer.from_pretrained("{out_name}")',
                 f'model = AutoModelForCausalLM.from_pretrained("{out_name}")', "```", "",
                 f"`fmforge serve {out_name}` puts it behind an OpenAI-compatible API."]
    aligned = ("Supervised fine-tuning on the examples above only: no preference tuning (RLHF, DPO) and no "
               "safety evaluation." if chat else
               "Continued pretraining only: not aligned, no instruction or preference tuning.")
    parts = [
        f"# {name}", what,
        "## Base model\n\n" + f"`{base}`" + (f" ({summary['model_type']}, {summary.get('total_params', 0):,} "
                                             "parameters)" if summary.get("model_type") else "")
        + ". Its own card states its training data, license and limits; they carry over.",
        "## Fine-tuning data\n\n" + _data_rows(summary, cfg, corpus),
        "## Method\n\n" + _table(["", ""], _method_rows(summary, cfg, adapter), left=2),
        "## How to use\n\n" + "\n".join(usage),
        "## Limitations\n\n" + f"- Everything the base model's card says.\n- {aligned}\n"
        + ("- Measured here: the held-out loss above; `fmforge finetune eval DIR HELD_OUT.jsonl` adds greedy "
           "exact-match accuracy." if chat else
           "- Measured here: the held-out loss above; `fmforge eval RUN --against DIR` scores it in bits per "
           "byte beside the base on a run's held-out bytes."),
    ]
    return "\n\n".join(parts)


def finetune_card(summary: dict[str, Any], cfg: RunConfig | None, base: str, kind: str, out_name: str,
                  adapter: dict[str, Any] | None = None, paths: bool = False,
                  machine_paths: list[str] | None = None, corpus: dict[str, Any] | None = None) -> ModelCard:
    """The card of what ``fmforge finetune`` wrote: ``kind`` "adapter" (LoRA, QLoRA),
    "model" (a full fine-tune) or "merged" (an adapter merged into its base).
    ``summary``: the stage's summary.json record; ``cfg``: the fine-tune's config;
    ``base``: the base's name; ``adapter``: the adapter's adapter_config.json;
    ``corpus``: the run's tokens/meta.json, for continued pretraining."""
    from huggingface_hub import ModelCardData

    adapter = adapter or {}
    export = cfg.export if cfg else None
    name = (export.name if export and export.name else None) or (cfg.name if cfg else out_name)
    name = f"{name}-merged" if kind == "merged" and not name.endswith("merged") else name
    method = summary.get("method") or "lora"
    license_ = export.license if export else None
    if kind == "adapter":  # as PEFT writes an adapter's card (its tags too), with ours
        tags = sorted({PROJECT, "transformers", "lora", f"base_model:adapter:{base}"}
                      | ({"qlora"} if method == "qlora" else set()))
        data = ModelCardData(model_name=name, base_model=base, library_name="peft",
                             pipeline_tag="text-generation", tags=tags, license=license_)
    else:
        tags = sorted({PROJECT, "text-generation", "fine-tuned"} | ({"lora"} if method != "full" else set()))
        data = ModelCardData(model_name=name, base_model=base, library_name="transformers",
                             pipeline_tag="text-generation", tags=tags, license=license_)
    body = _finetune_body(name, base, kind, summary, cfg, adapter, out_name, corpus)
    found = [str(Path.home()), *(str(v) for k, v in summary.items() if k in ("base", "base_config", "output") and v),
             *(machine_paths or [])]
    if cfg is not None:
        found += [str(cfg.run_dir), str(cfg.config_dir or "")]
        if cfg.finetune is not None:
            found += [str(Path(p).parent) for p in cfg.finetune.data + list(cfg.finetune.val_data or [])]
    if paths:
        body += "\n\n" + _provenance_section([("base model", str(summary.get("base", "-"))),
                                               *(("written to", p) for p in (machine_paths or [])[:1])])
    return _assemble(data, body, paths, found)


def _base_name(base_dir: str | Path, cfg: RunConfig | None) -> str:
    name = base_model_name(base_dir)
    if name == "base-hf" and cfg is not None and cfg.finetune is not None:
        return Path(cfg.finetune.base).name  # an fmforge run exported as the base (an earlier fmforge's, no card)
    return name


def write_finetune_card(out_dir: Path, summary: dict[str, Any], paths: bool = False) -> Path:
    """Write the card of the adapter or model ``fmforge finetune`` is writing to
    ``out_dir`` (its temporary name), from ``summary`` (summary.json's record) and
    the fine-tune's config.yaml beside ``summary["output"]``."""
    out_dir = Path(out_dir)
    final = Path(summary["output"])
    cfg = _config(final.parent / "config.yaml")
    kind = "model" if summary.get("method") == "full" else "adapter"
    card = finetune_card(summary, cfg, _base_name(summary["base"], cfg), kind, final.name,
                         adapter=_adapter_config(out_dir) if kind == "adapter" else None, paths=paths,
                         machine_paths=[str(final), str(final.parent), str(out_dir.resolve())],
                         corpus=_read_json(final.parent.parent / "tokens" / "meta.json"))
    return write_card(card, out_dir)


def write_merged_card(out_dir: Path, adapter_dir: str | Path, base: str | Path | None = None,
                      out_name: str | None = None, paths: bool = False) -> Path:
    """Write the card of ``fmforge finetune merge`` into ``out_dir``: the fine-tune's
    own record when the adapter lies in a fine-tune directory
    (``runs/NAME/finetune/adapter``), else what ``adapter_config.json`` says."""
    from fmforge.inference.hf_models import adapter_base

    out_dir, adapter_dir = Path(out_dir), Path(adapter_dir)
    base_dir = adapter_base(adapter_dir, base)
    summary, cfg = _read_json(adapter_dir.parent / "summary.json"), _config(adapter_dir.parent / "config.yaml")
    adapter = _adapter_config(adapter_dir)
    if not summary or Path(summary.get("output", "")).resolve() != adapter_dir.resolve():
        peft_type = str(adapter.get("peft_type", "LORA")).lower()
        summary, cfg = {"method": peft_type, "lora_r": adapter.get("r")}, None
    name = base_model_name(base_dir)
    if (adapter_dir / CARD).is_file():  # the adapter's own card names its base (ours without a path)
        try:
            from huggingface_hub import ModelCard

            named = ModelCard.load(adapter_dir / CARD).data.base_model
            if isinstance(named, str) and named and not Path(named).is_absolute():
                name = named
        except Exception:  # noqa: BLE001 - a README that is no card: the base's own name
            pass
    if name == "base-hf":
        name = _base_name(base_dir, cfg)
    corpus = _read_json(adapter_dir.parent.parent / "tokens" / "meta.json") if cfg is not None else None
    card = finetune_card(summary, cfg, name, "merged", out_name or out_dir.name, adapter=adapter, paths=paths,
                         corpus=corpus,
                         machine_paths=[str(out_dir.resolve()), str(adapter_dir.resolve()),
                                        str(Path(base_dir).resolve()), str(adapter_dir.resolve().parent)])
    return write_card(card, out_dir)
