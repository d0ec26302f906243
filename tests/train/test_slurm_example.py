"""examples/slurm_train.sbatch, run by bash with Slurm's environment for 2 nodes ×
8 GPUs and stand-ins for ``srun`` and ``scontrol``: the torchrun command line it
renders parses with torchrun's own parser into the launch we mean, its training
arguments load as a config, and the README's and docs' multi-node recipes are the
same launch."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from fmforge.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "slurm_train.sbatch"


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[str]:
    """The arguments the script hands ``srun`` on a 2-node allocation."""
    tmp = tmp_path_factory.mktemp("slurm")
    bin_dir, record = tmp / "bin", tmp / "srun-args"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", f'printf "%s\\0" "$@" > {shlex.quote(str(record))}\n')
    # The second host comes a moment after the first, as from a real scontrol over many
    # nodes: a reader that stops after one line (`head -n 1`) gets it killed by SIGPIPE,
    # which `set -o pipefail` turned into the script's failure.
    _stub(bin_dir / "scontrol", 'test "$1 $2 $3" = "show hostnames gpu[07-08]" || exit 1\n'
                                'printf "gpu07\\n"; sleep 0.3; printf "gpu08\\n"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(ROOT), "FMFORGE_VENV": str(tmp / "no-venv")}
    done = subprocess.run(["bash", str(SCRIPT), "configs/llama-8b.yaml", "train.parallel=hsdp"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 nodes x 8 GPUs, rendezvous gpu07:29400" in done.stdout
    return record.read_text().split("\0")[:-1]


def _torchrun_args(argv: list[str]):
    """torchrun's parse of the arguments after ``python -m torch.distributed.run``."""
    at = argv.index("torch.distributed.run")
    assert argv[at - 2: at] == ["python", "-m"], argv
    return get_args_parser().parse_args(argv[at + 1:])


def test_the_slurm_example_launches_two_nodes_of_eight_gpus_with_one_rendezvous(rendered):
    assert rendered[0] == "--kill-on-bad-exit=1"
    args = _torchrun_args(rendered)
    assert (args.nnodes, args.nproc_per_node) == ("2", "8")
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", "gpu07:29400", "4242")
    assert args.module and args.training_script == "fmforge"
    assert args.training_script_args == ["train", "configs/llama-8b.yaml", "train.parallel=hsdp"]


def test_the_rendered_training_arguments_are_a_valid_hsdp_config(rendered):
    script_args = _torchrun_args(rendered).training_script_args
    cfg = load_config(ROOT / script_args[1], script_args[2:])
    assert cfg.train.parallel == "hsdp" and cfg.train.replicate_degree is None  # one replica a node


def _recipe(page: Path) -> list[str]:
    """The multi-node torchrun command of a page (backslash continuations joined)."""
    text = page.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.lstrip().startswith("torchrun --nnodes")]
    assert len(lines) == 1, (page, lines)
    return shlex.split(lines[0].split("#")[0])


@pytest.mark.parametrize("page", ["README.md", "docs/training.md"])
def test_the_documented_multi_node_recipe_is_the_slurm_examples_launch(rendered, page):
    ours = _torchrun_args(rendered)
    documented = get_args_parser().parse_args(_recipe(ROOT / page)[1:])
    for key in ("nnodes", "nproc_per_node", "rdzv_backend", "module", "training_script"):
        assert getattr(documented, key) == getattr(ours, key), key
    assert re.fullmatch(r"HOST:29400", documented.rdzv_endpoint)
    assert documented.training_script_args[0] == "train"
    assert documented.training_script_args[2:] == ours.training_script_args[2:]
