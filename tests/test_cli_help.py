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
