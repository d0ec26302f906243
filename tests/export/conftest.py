"""Tiny trained runs to export: tied embeddings with grouped-query attention, and an
untied head with plain multi-head attention and another rope base; each briefly
trained (tiny_runs) or trained until its choices are decisive (decisive_runs), and
one with GPT-2's split instead of GPT-4's."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from fmforge.config import config_from_dict
from fmforge.pipeline import run_pipeline
from fmforge.rundir import RunDir

# Imported at collection instead of by the first test that needs them: under
# mutmut's fork server each mutant's test process starts from the collected state,
# and these imports (seconds of CPU) would otherwise be paid by every one of them.
for _module in ("transformers.models.llama.modeling_llama", "transformers.models.auto.modeling_auto",
                "safetensors.torch", "peft", "gguf", "llama_cpp", "llama_cpp.llama_chat_format"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_module)

SHAPES = {
    "gqa-tied": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "tie_embeddings": True},
    "mha-untied": {"d_model": 32, "n_heads": 4, "n_kv_heads": 4, "tie_embeddings": False,
                   "rope_theta": 500_000.0, "norm_eps": 1e-6},
}


def train_run(tmp_path_factory, make_tiny_config, name: str, steps: int, batch: int,
              **sections) -> RunDir:
    """A run of SHAPES[name] trained for ``steps`` with a window of 64 tokens, room
    for a prompt and 30 greedy tokens."""
    model = {**SHAPES[name], "n_layers": 2, "seq_len": 64, **sections.pop("model", {})}
    key = f"{name}-{steps}-{batch}-" + json.dumps(sections, sort_keys=True)
    shared = _shared_dir(key)
    with _locked(shared):
        if shared is not None and (shared / "run.txt").is_file():
            return RunDir(Path((shared / "run.txt").read_text()))
        where = shared if shared is not None else tmp_path_factory.mktemp(name)
        raw = make_tiny_config(where, model=model,
                               train={"max_steps": steps, "checkpoint_every": steps,
                                      "eval_every": steps, "micro_batch_size": batch}, **sections)
        run, _ = run_pipeline(config_from_dict(raw), stages=("data", "tokenizer", "tokenize", "train"))
        if shared is not None:
            (shared / "run.txt").write_text(str(run.root))
    return run


def _shared_dir(key: str) -> Path | None:
    """Under mutmut, with a mutant of the export package under test, every mutant's
    test process would train the same runs again (most of its time): they are then
    trained once into a directory the mutants share. An export mutant cannot change
    the data, tokenizer or training stages, so the runs are what each process would
    train. Otherwise (``make test``, or a mutant of another package) None: trained
    afresh in the session's temporary directory."""
    if not os.environ.get("MUTANT_UNDER_TEST", "").startswith("fmforge.export."):
        return None
    # one folder per user and per mutmut run (the mutants' parent process): another
    # user's folder is unwritable, and an earlier run's was built by other code
    root = Path(tempfile.gettempdir()) / f"fmforge-mutmut-export-runs-{os.getuid()}-{os.getppid()}"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    (root / safe).mkdir(parents=True, exist_ok=True)
    return root / safe


@contextlib.contextmanager
def _locked(shared: Path | None):
    """One process trains a shared run, the others wait and then load it."""
    if shared is None:
        yield
        return
    with open(shared / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, make_tiny_config) -> dict[str, RunDir]:
    """Trained for a few steps, so the weights are not their initial values."""
    return {name: train_run(tmp_path_factory, make_tiny_config, name, 12, 4) for name in SHAPES}


@pytest.fixture(scope="session")
def decisive_runs(tmp_path_factory, make_tiny_config) -> dict[str, RunDir]:
    """The same shapes trained for 200 steps (about 10 s each): their logits span
    about ±8 instead of ±1, so a greedy choice is seldom a near-tie, and comparing
    another engine's greedy tokens and logits with ours has teeth."""
    return {name: train_run(tmp_path_factory, make_tiny_config, name, 200, 8) for name in SHAPES}


@pytest.fixture(params=list(SHAPES))
def decisive_run(request, decisive_runs) -> RunDir:
    return decisive_runs[request.param]


@pytest.fixture(params=list(SHAPES))
def tiny_run(request, tiny_runs) -> RunDir:
    return tiny_runs[request.param]


@pytest.fixture(scope="session")
def greedy():
    """Greedy decoding by full recomputation (argmax of the last position's logits),
    the reference every exported model must reproduce token for token."""

    @torch.no_grad()
    def decode(model, ids: list[int], n: int) -> list[int]:
        ids = list(ids)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[-n:]

    return decode


@pytest.fixture(scope="session")
def gpt2_split_run(tmp_path_factory, make_tiny_config) -> RunDir:
    """A run whose tokenizer splits with GPT-2's pattern (``tokenizer.split: gpt2``)
    instead of the default GPT-4 one: the export names each split differently."""
    return train_run(tmp_path_factory, make_tiny_config, "gqa-tied", 12, 4,
                     tokenizer={"split": "gpt2"})


@pytest.fixture(params=["gpt4", "gpt2"])
def split_run(request, tiny_runs, gpt2_split_run) -> tuple[str, RunDir]:
    """(split, run) for each of fmforge's two byte-level splits."""
    return request.param, tiny_runs["gqa-tied"] if request.param == "gpt4" else gpt2_split_run
