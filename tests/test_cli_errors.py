"""A user's mistake is one line and exit code 2; a bug of ours keeps its traceback
(issue 20: "`_reported` turns every `ValueError` into a one-line user error,
which hides the traceback of our own bugs").

User errors are ``fmforge.errors.UserError`` subclasses; each named error keeps
the builtin base it had (``ConfigError`` is still a ``ValueError``), so code that
catches the builtin still catches it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app

runner = CliRunner()


def _bug(exc_type: type[Exception]):
    def fail(*args, **kwargs):
        raise exc_type("internal")

    return fail


# (a) A plain ValueError or FileNotFoundError from our own code is a bug: it
# propagates with its traceback (CliRunner: result.exception is it, exit code 1)
# instead of becoming "error: internal" and exit code 2.

@pytest.mark.parametrize("exc_type", [ValueError, FileNotFoundError])
def test_a_bug_inside_a_stage_command_keeps_its_traceback(tiny_config_file: Path, monkeypatch, exc_type):
    import fmforge.pipeline

    monkeypatch.setattr(fmforge.pipeline, "run_stage", _bug(exc_type))
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 1, result.output
    assert type(result.exception) is exc_type and "internal" in str(result.exception)
    assert "error:" not in result.output


def test_a_bug_while_loading_a_model_for_generate_keeps_its_traceback(tmp_path: Path, monkeypatch):
    import fmforge.inference.loading

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    monkeypatch.setattr(fmforge.inference.loading, "load_trained", _bug(ValueError))
    result = runner.invoke(app, ["generate", str(tmp_path / "run"), "--prompt", "x"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, ValueError) and str(result.exception) == "internal"
    assert "error:" not in result.output


def test_a_bug_inside_plan_keeps_its_traceback(monkeypatch):
    import fmforge.plan.command

    monkeypatch.setattr(fmforge.plan.command, "plan_command", _bug(FileNotFoundError))
    result = runner.invoke(app, ["plan", "--params", "1e9", "--tokens", "2e10"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, FileNotFoundError) and str(result.exception) == "internal"
    assert "error:" not in result.output


# (b) A user error raised deep inside a command is still one line and exit code 2.

@pytest.mark.parametrize("where", [("fmforge.config", "ConfigError"),
                                   ("fmforge.errors", "InputFileMissing"),
                                   ("fmforge.rundir", "ArtifactMissingError"),
                                   ("fmforge.train.loop", "TrainingDiverged")])
def test_a_user_error_inside_a_stage_is_one_line_and_exit_code_2(tiny_config_file: Path, monkeypatch, where):
    import fmforge.pipeline

    error = getattr(importlib.import_module(where[0]), where[1])
    monkeypatch.setattr(fmforge.pipeline, "run_stage", _bug(error))
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "error: internal" in result.output


def test_a_config_error_found_by_a_stage_is_one_line_without_a_traceback(tmp_path: Path, make_tiny_config):
    """End to end, as a user sees it: ``sources[].languages: []`` passes the schema
    and is refused when the data stage builds its filters."""
    raw = make_tiny_config(tmp_path)
    raw["data"]["sources"][0]["languages"] = []
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "fmforge", "data", str(config)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FMFORGE_NO_PROGRESS": "1"})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    shown = [line for line in out.splitlines() if "languages" in line]
    assert len(shown) == 1 and shown[0].startswith("error: sources[].languages is an empty list"), out


def test_a_missing_data_file_or_an_unloadable_model_directory_is_one_line(tmp_path: Path):
    """Paths a user names, read by us or by transformers: one line, exit code 2."""
    data = tmp_path / "held-out.jsonl"
    result = runner.invoke(app, ["finetune", "eval", str(tmp_path), str(data), "--no-accuracy"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert f"error: {data} does not exist" in result.output
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n')
    result = runner.invoke(app, ["finetune", "eval", str(tmp_path), str(data), "--no-accuracy"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert f"error: {tmp_path}: transformers cannot load its tokenizer" in result.output


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: café\n".encode("latin-1"))
    result = runner.invoke(app, ["data", str(config)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert f"error: {config} is not UTF-8" in result.output


# (c) Named errors are user errors, and still what they were before.

NAMED = [
    ("fmforge.config", "ConfigError", ValueError),
    ("fmforge.config", "EmptyHeldOutError", ValueError),
    ("fmforge.hardware", "HardwareError", ValueError),
    ("fmforge.launch", "LaunchError", ValueError),
    ("fmforge.rundir", "RunDirWriteError", OSError),
    ("fmforge.rundir", "RunLockedError", RuntimeError),
    ("fmforge.rundir", "ArtifactMissingError", FileNotFoundError),
    ("fmforge.rundir", "ArtifactError", ValueError),
    ("fmforge.errors", "InputFileMissing", FileNotFoundError),
    ("fmforge.model.counting", "ArchitectureError", ValueError),
    ("fmforge.data.problems", "DataError", ValueError),
    ("fmforge.data.problems", "NoFilesMatchedError", ValueError),
    ("fmforge.data.problems", "BadInputError", ValueError),
    ("fmforge.data.shards", "DamagedShardError", ValueError),
    ("fmforge.tokenizer.tokens", "DamagedTokensError", ValueError),
    ("fmforge.tokenizer.byo", "TokenizerPathError", ValueError),
    ("fmforge.train.checkpoint", "CheckpointFormatError", ValueError),
    ("fmforge.train.device", "DeviceError", ValueError),
    ("fmforge.train.loop", "TrainingDiverged", RuntimeError),
    ("fmforge.inference.loading", "StaleCheckpointError", ValueError),
    ("fmforge.inference.hf_models", "AdapterError", ValueError),
    ("fmforge.inference.engine", "RequestError", ValueError),
    ("fmforge.eval.against", "CandidateError", ValueError),
    ("fmforge.export.mapping", "UnsupportedModelError", ValueError),
    ("fmforge.export.gguf", "GGUFExportError", ValueError),
    ("fmforge.finetune.data", "DataError", ValueError),
    ("fmforge.finetune.lora", "BaseModelError", ValueError),
    ("fmforge.finetune.lora", "QLoRAUnavailable", RuntimeError),
    ("fmforge.plan.errors", "PlanError", ValueError),
    ("fmforge.init.scan", "ScanError", ValueError),
    ("fmforge.init.write", "InitError", ValueError),
    ("fmforge.ladder.run", "LadderError", ValueError),
    ("fmforge.pipeline", "StageOrderError", RuntimeError),
]


@pytest.mark.parametrize("module, name, builtin", NAMED, ids=[f"{m}.{n}" for m, n, _ in NAMED])
def test_named_errors_are_user_errors_and_keep_their_builtin_base(module, name, builtin):
    from fmforge.errors import UserError

    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, UserError) and issubclass(error, builtin)
    with pytest.raises(builtin, match="what to do"):  # an `except ValueError` still catches it
        raise error("what to do")


def test_reclassified_raise_sites_are_user_errors_and_still_their_builtin(tmp_path: Path):
    from fmforge.errors import UserError
    from fmforge.finetune.data import expand_paths
    from fmforge.ladder.run import parse_sizes
    from fmforge.rundir import read_json_artifact, resolve_run

    with pytest.raises(FileNotFoundError, match="no run at") as err:
        resolve_run(tmp_path / "nowhere")
    assert isinstance(err.value, UserError)
    with pytest.raises(FileNotFoundError, match="matches no file") as err:
        expand_paths(["nothing-*.jsonl"], str(tmp_path))
    assert isinstance(err.value, UserError)
    with pytest.raises(ValueError, match="write d_model x n_layers") as err:
        parse_sizes("64y2")
    assert isinstance(err.value, UserError)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON") as err:
        read_json_artifact(tmp_path / "plan.json", "run")
    assert isinstance(err.value, UserError)


def test_internal_invariants_stay_plain_errors():
    """Checks that only a bug of ours can trip are not user errors: they keep a traceback."""
    from fmforge.errors import UserError
    from fmforge.inference.engine import GenerationRequest
    from fmforge.pipeline import own_config

    with pytest.raises(ValueError, match="unknown stage") as err:
        own_config(None, "nonsense")
    assert not isinstance(err.value, UserError)
    with pytest.raises(ValueError, match="exactly one of prompt") as err:  # a caller's slip
        GenerationRequest()
    assert not isinstance(err.value, UserError)
    with pytest.raises(ValueError, match="temperature must be >= 0") as err:  # a user's setting
        GenerationRequest(prompt="x", temperature=-1)
    assert isinstance(err.value, UserError)


# ------------------------------------------------------- optional packages missing

@pytest.mark.parametrize("missing, args, extra", [
    ("fastapi", ["serve", "runs/none"], "serve"),
    ("peft", ["finetune", "merge", "adapter", "out"], "finetune"),
    ("peft", ["finetune", "eval", "model", "data.jsonl"], "finetune"),
], ids=["serve", "finetune-merge", "finetune-eval"])
def test_a_command_whose_extra_is_not_installed_says_which_to_install(monkeypatch, missing, args, extra):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"pip install 'fmforge[{extra}]'" in result.output
    assert "Traceback" not in result.output


def test_a_feature_whose_package_is_missing_raises_a_user_error(monkeypatch):
    from fmforge.data.executor import ExecutorSpec, TaskRunner
    from fmforge.errors import MissingDependencyError, UserError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fmforge\[ray\]'") as caught:
        TaskRunner(ExecutorSpec(kind="ray"))._connect_ray()
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ImportError)
