"""Standard benchmarks through lm-evaluation-harness (``lm-eval``).

``FmforgeLM`` is an lm-eval model, registered as ``fmforge``: a run's checkpoint
answers lm-eval's three request types the way its ``hf`` backend answers them
for the same model exported to Hugging Face format (tested: same numbers):

- ``loglikelihood``: lm-eval's ``TemplateLM`` splits context and continuation
  (trailing spaces of the context move to the continuation; an empty context is
  the prefix token: BOS if the tokenizer has one, else end-of-text); the pairs
  are scored longest first, ``batch_size`` at a time, right-padded, in one
  forward pass each, left-truncated to the model's context;
- ``loglikelihood_rolling``: lm-eval's own rolling windows
  (``get_rolling_token_windows``, context 1) scored the same way;
- ``generate_until``: the KV-cache engine (``fmforge.inference.engine``), all
  requests decoded together (``batch_size`` sequences in flight), greedy unless
  the task samples, stopping at the task's ``until`` strings or end-of-text.

``run_harness`` runs lm-eval in-process on task names lm-eval knows (its own,
and YAML tasks under ``include_path``); nothing downloads: Hugging Face datasets
and the Hub are put offline first, so a task finds its data where lm-eval finds
it locally or not at all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fmforge.errors import InputFileMissing, UserError
from fmforge.eval.results import record_harness
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel, load_trained
from fmforge.rundir import RunDir, resolve_run
from fmforge.tokenizer.load import special_token_ids

# Before lm-eval (and through it `datasets`) is imported: nothing downloads.
for _var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import lm_eval.models  # noqa: E402,F401  (lm-eval's own backends stay registered: hf, vllm ...)
from lm_eval import utils as lm_utils  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402


class HarnessError(UserError, ValueError):
    """A benchmark run that cannot start as asked: no or unknown tasks, task data that is
    not on local disk, no run named."""


@register_model("fmforge")
class FmforgeLM(TemplateLM):
    """lm-eval model over a trained run: ``model_args="run=runs/demo,step=346"``."""

    def __init__(self, run: str | Path | None = None, step: int | None = None, device: str = "auto",
                 batch_size: int | str = 8, max_gen_toks: int = 256,
                 trained: TrainedModel | None = None, bos_id: int | None = None, **_ignored: Any):
        super().__init__()
        if trained is None:
            if run is None:
                raise HarnessError("FmforgeLM needs run=RUN (a run directory or a name under runs/)")
            run_dir = resolve_run(run)
            trained = load_trained(run_dir, device=device, step=None if step is None else int(step))
            bos_id = special_token_ids(run_dir.tokenizer, trained.tokenizer).get("bos")
        self.trained = trained
        self.model = trained.model.eval()
        self.tokenizer = trained.tokenizer
        self._device = trained.device
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = self.model.cfg.seq_len
        self._max_gen_toks = int(max_gen_toks)
        self._eot = trained.eos_id
        self._bos = bos_id
        self.engine = Engine(trained, max_batch=self.batch_size)

    # ----------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        # What the hf backend prefixes an empty context with: BOS if there is one.
        return self._bos if self._bos is not None else self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # The tokenizer's post-processor decides, as transformers' encode() does.
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens is not False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # ----------------------------------------------------------- scoring
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is the greedy choice) per
        (key, context ids, continuation ids), batched longest first."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        items = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("lm-eval asked for the likelihood of an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            items.append((i, whole[:-1], list(continuation)[-len(whole) + 1:] if len(whole) > 1 else []))
        items.sort(key=lambda it: -len(it[1]))
        for start in range(0, len(items), self.batch_size):
            batch = items[start: start + self.batch_size]
            width = len(batch[0][1])
            x = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, inp, _) in enumerate(batch):
                x[row, : len(inp)] = torch.tensor(inp)
            logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1).cpu()
            for row, (i, inp, cont) in enumerate(batch):
                # The continuation's predictions end at the input's last position.
                span = logp[row, len(inp) - len(cont): len(inp)]
                target = torch.tensor(cont)
                ll = float(span.gather(1, target[:, None]).sum())
                results[i] = (ll, bool((span.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        gen = []
        for context, kwargs in (req.args for req in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eot_text = self.tok_decode([self._eot])
            if eot_text and eot_text not in until:
                until.append(eot_text)
            max_new = min(int(kwargs.pop("max_gen_toks", self._max_gen_toks)), self.max_length - 1)
            sample = kwargs.pop("do_sample", False) and float(kwargs.get("temperature", 1.0)) > 0
            gen.append(GenerationRequest(
                prompt_ids=self.tok_encode(context) or [self.prefix_token_id], max_new_tokens=max_new,
                temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
                top_p=kwargs.get("top_p") if sample else None, top_k=kwargs.get("top_k") if sample else None,
                seed=1234 if sample else None, stop=until, truncate="left"))
        texts = [r.text for r in self.engine.generate(gen)]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


def _task_manager(tasks: list[str], include_path: list[str] | None):
    """A TaskManager that knows every requested task; indexing lm-eval's own
    thousands of tasks takes half a minute, so local task directories are tried alone first."""
    from lm_eval.tasks import TaskManager

    if include_path:
        for p in include_path:
            if not Path(p).is_dir():
                raise InputFileMissing(f"--include-path {p} is not a directory of lm-eval task YAML files")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    manager = TaskManager(include_path=include_path or None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise HarnessError(
            f"unknown lm-eval task(s): {', '.join(unknown)}. `lm-eval ls tasks` lists the "
            f"{len(manager.all_tasks):,} tasks lm-eval knows; a task of your own is a YAML file "
            "in a directory given with --include-path (docs/evaluation.md shows one)")
    return manager


def run_harness(run: RunDir, tasks: list[str], num_fewshot: int | None = None,
                limit: float | None = None, batch_size: int = 8, device: str = "auto",
                step: int | None = None, include_path: list[str] | None = None,
                log_samples: bool = False, trained: TrainedModel | None = None) -> dict[str, Any]:
    """Run lm-eval on ``tasks`` with the run's checkpoint; store the results in
    ``eval.json`` under ``harness.STEP``. Returns lm-eval's results dict (with
    ``table``: its printed table)."""
    from lm_eval import simple_evaluate

    if not tasks:
        raise HarnessError("no tasks given: --tasks hellaswag,arc_easy,...")
    manager = _task_manager(tasks, include_path)
    if trained is None:
        trained = load_trained(run, device=device, step=step)
    lm = FmforgeLM(trained=trained, batch_size=batch_size,
                   bos_id=special_token_ids(run.tokenizer, trained.tokenizer).get("bos"))
    t0 = time.perf_counter()
    try:
        out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                              task_manager=manager, log_samples=log_samples, bootstrap_iters=0,
                              random_seed=0, numpy_random_seed=1234, torch_random_seed=1234)
    except (ConnectionError, OSError) as exc:
        raise HarnessError(f"lm-eval could not read a task's data locally ({exc}); nothing is downloaded: "
                           "point the task at local files (dataset_path: json with data_files, or a "
                           "datasets cache in HF_DATASETS_CACHE) as docs/evaluation.md shows") from exc
    seconds = round(time.perf_counter() - t0, 2)
    tasks_out = {name: {k: v for k, v in res.items() if isinstance(v, (int, float, str)) and v == v}
                 for name, res in out["results"].items()}
    config = {"tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
              "seconds": seconds, "evaluated_at": time.time(), "lm_eval_version": _lm_eval_version(),
              "n_samples": out.get("n-samples", {})}
    record_harness(run, trained.step, {"tasks": tasks_out, "config": config})
    out["table"] = lm_utils.make_table(out)
    out["step"] = trained.step
    return out


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
