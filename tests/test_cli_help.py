"""``fmforge --help`` at 80 columns: help text flows to the terminal's width.
Docstrings are wrapped in the source; a help line that breaks where the source
line did, not where the terminal ends, leaves a half-empty line and its
continuation below (issue 21: "wrap sentences mid-line at 80 columns")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"], ["eval", "--help"], ["ladder", "--help"]])
def test_help_lines_break_only_where_the_terminal_ends(args):
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "fmforge", *args], capture_output=True, text=True,
                         env=env, timeout=60).stdout
    lines = out.splitlines()
    assert len(lines) > 5
    short_then_continued = []
    for line, nxt in zip(lines, lines[1:]):
        text, following = line.strip(" │╭╰─"), nxt.strip(" │")
        # a description line that stops well before the edge, followed by more of
        # the same sentence (a lower-case continuation) on the next line
        if 0 < len(line.rstrip(" │")) < 50 and following[:1].islower() and text[-1:].isalpha():
            short_then_continued.append((line, nxt))
    assert short_then_continued == []


@pytest.mark.parametrize("args", [
    ["--data-tokens", "2e8", "--base-params", "8e9", "--api-price", "3", "--monthly-tokens", "5e8",
     "--gpu", "l4", "--num-gpus", "1"],                                      # train, customize or buy
    ["--params", "7e9", "--tokens", "2e12", "--gpu", "h100-sxm", "--num-gpus", "512", "--mfu", "0.4"],
    ["--budget", "50000", "--gpu", "h100-sxm"],
])
def test_plan_tables_piped_at_80_columns_cut_no_word(args):
    """Piped (no terminal, 80 columns), every table and line fits and no cell is
    cut short with an ellipsis: a cut figure or name is a wrong one."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "FMFORGE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "fmforge", "plan", *args], capture_output=True, text=True,
                          env=env, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
