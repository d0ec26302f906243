"""`fmforge generate` on a real (tiny) run goes through the engine."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from fmforge.cli import app, unescape
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.generate import generate_text
from fmforge.inference.loading import load_trained
from fmforge.rundir import resolve_run

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def test_generate_command_uses_the_engine(tmp_path: Path, make_tiny_config):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(make_tiny_config(tmp_path)))
    run = tmp_path / "run"
    invoke("run", str(config))
    trained = load_trained(resolve_run(str(run)), device="cpu")
    want = Engine(trained).generate([GenerationRequest(prompt="def alpha", max_new_tokens=20,
                                                       temperature=0)])[0].text
    out = invoke("generate", str(run), "--prompt", "def alpha", "--temperature", "0",
                 "--max-new-tokens", "20")
    assert out == want + "\n"
    # --stop cuts before the stop string; --top-p and --seed are accepted.
    # (a stop string from the middle of the greedy text: it may be all indentation)
    stop = want[len(want) // 2:len(want) // 2 + 2]
    cut = invoke("generate", str(run), "-p", "def alpha", "--temperature", "0",
                 "--max-new-tokens", "20", "--stop", stop, "--stop", "zzzz")
    assert cut == want[: want.index(stop)] + "\n"
    # "\n" typed in shell quotes arrives as backslash-n: it means a newline.
    want_nl = Engine(trained).generate([GenerationRequest(prompt="def alpha():\n", max_new_tokens=12,
                                                          temperature=0)])[0].text
    assert invoke("generate", str(run), "-p", r"def alpha():\n", "--temperature", "0",
                  "--max-new-tokens", "12") == want_nl + "\n"
    seeded = ("generate", str(run), "-p", "def", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "20")
    assert invoke(*seeded) == invoke(*seeded)
    # A prompt past the context is refused with the lengths (seq_len is 32 here),
    # or keeps its last tokens with --truncate.
    too_long = runner.invoke(app, ["generate", str(run), "-p", "def alpha(beta, gamma): " * 20,
                                   "--temperature", "0", "--max-new-tokens", "8"])
    assert too_long.exit_code == 2 and "leaves room for 24" in too_long.output
    long = invoke("generate", str(run), "-p", "def alpha(beta, gamma): " * 20, "--temperature", "0",
                  "--max-new-tokens", "8", "--truncate")
    assert long.rstrip("\n")  # some completion (possibly indentation) was written
    bad = runner.invoke(app, ["generate", str(run), "-p", "x", "--max-new-tokens", "40"])
    assert bad.exit_code != 0 and "context of 32 tokens" in bad.output
    # The sample a run prints after eval is lenient: at most seq_len - 1 new tokens.
    assert generate_text(trained, "def", max_new_tokens=64, temperature=0)


def test_typed_escapes_become_characters_and_other_backslashes_stay():
    assert unescape(r"Ticket: VPN drops\nCategory:") == "Ticket: VPN drops\nCategory:"
    assert unescape(r"a\tb\\nc") == "a\tb\\nc"  # a doubled backslash is one backslash
    assert unescape(r"C:\path\x") == r"C:\path\x"
    assert unescape("ends with \\") == "ends with \\"
