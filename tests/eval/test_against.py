"""Any local model on the run's held-out bytes (``fmforge eval RUN --against``):
the run's own Hugging Face export scores what the run scores, a candidate's
figure is what transformers computes by hand on the same bytes, and a model
that cannot be scored this way is refused with a reason."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmforge.eval.against import CandidateError, evaluate_against, heldout_documents, load_candidate
from fmforge.eval.stage import run_eval_stage
from fmforge.config import config_from_dict
from fmforge.export.hf import export_hf

import yaml

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A private copy of the session's trained run (these tests write its
    eval.json), evaluated, and its Hugging Face export."""
    from fmforge.rundir import RunDir

    root = tmp_path_factory.mktemp("against")
    shutil.copytree(trained_run.root, root / "run")
    run = RunDir(root / "run")
    raw = yaml.safe_load(run.config.read_text())
    raw["out_dir"] = str(run.root)  # the copy's config names the copy
    run.config.write_text(yaml.safe_dump(raw))
    export_hf(run, root / "hf")
    cfg = config_from_dict(yaml.safe_load(run.config.read_text()))
    run_eval_stage(cfg, run)
    return run, root / "hf"


def test_the_runs_own_export_scores_what_the_run_scores(exported, monkeypatch):
    run, hf = exported
    monkeypatch.setattr("fmforge.eval.against._native_bf16", lambda device: False)  # exact figures
    found = evaluate_against(run, [hf, run.root], CPU)
    ev = json.loads(run.eval_json.read_text())
    own = ev["bits_per_byte"]
    by_export, by_run = found["hf"], found[run.root.resolve().name]
    assert by_export["bits_per_byte"] == pytest.approx(own, rel=0.01)
    # the export and the run are the same weights: the same figure, per source too
    assert by_export["bits_per_byte"] == pytest.approx(by_run["bits_per_byte"], rel=1e-4)
    for source, r in ev["per_source"].items():
        assert by_export["per_source"][source]["bits_per_byte"] == pytest.approx(r["bits_per_byte"], rel=0.01)
        assert by_export["per_source"][source]["bytes"] == r["bytes"]
    assert ev["against"]["hf"]["bits_per_byte"] == by_export["bits_per_byte"]  # recorded in eval.json


def test_a_candidates_figure_is_what_transformers_computes_on_the_same_bytes(exported, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, hf = exported
    monkeypatch.setattr("fmforge.eval.against._native_bf16", lambda device: False)
    found = evaluate_against(run, [hf], CPU, stride=None)["hf"]
    model = AutoModelForCausalLM.from_pretrained(str(hf), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    window = model.config.max_position_embeddings
    nats, n_bytes = 0.0, 0
    for source, texts in heldout_documents(run).items():
        ids = [tok.eos_token_id]
        for text in texts:
            ids += tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            n_bytes += len(text.encode("utf-8"))
        # non-overlapping windows of `window` inputs; the last one shorter
        for start in range(0, len(ids) - 1, window):
            x = torch.tensor(ids[start: start + window + 1])
            with torch.no_grad():
                logits = model(input_ids=x[None, :-1]).logits[0]
            nats += float(torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum"))
    assert found["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-4)


def test_a_tokenizer_that_cannot_encode_the_text_is_refused(exported, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    run, hf = exported
    bad = tmp_path / "wordlevel"
    shutil.copytree(hf, bad)
    words = {"[UNK]": 0, "def": 1, "return": 2, "the": 3, "<|endoftext|>": 4}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(bad / "tokenizer.json"))
    conf = json.loads((bad / "tokenizer_config.json").read_text())
    conf.update({"unk_token": "[UNK]", "eos_token": "<|endoftext|>"})
    conf.pop("added_tokens_decoder", None)
    (bad / "tokenizer_config.json").write_text(json.dumps(conf))
    with pytest.raises(CandidateError, match="cannot encode the held-out text exactly"):
        evaluate_against(run, [bad], CPU)


def test_a_directory_that_is_not_a_causal_lm_is_refused(exported, tmp_path):
    run, _ = exported
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(CandidateError, match="ViTModel is not a causal language model"):
        load_candidate(vit, CPU)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CandidateError, match="not a model"):
        load_candidate(empty, CPU)


def test_max_bytes_keeps_each_sources_share(exported):
    run, _ = exported
    whole = heldout_documents(run)
    sizes = {s: sum(len(t.encode()) for t in v) for s, v in whole.items()}
    cap = sum(sizes.values()) // 3
    part = heldout_documents(run, max_bytes=cap)
    for source, texts in part.items():
        kept = sum(len(t.encode()) for t in texts)
        share = cap * sizes[source] / sum(sizes.values())
        assert texts == whole[source][: len(texts)] and texts  # a prefix, never empty
        assert kept <= share or len(texts) == 1


def test_the_command_line_scores_several_candidates_at_once(exported, tmp_path):
    run, hf = exported
    adapted = tmp_path / "runs" / "adapted" / "finetune" / "model"  # where a fine-tune writes its model
    shutil.copytree(hf, adapted)
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1", "COLUMNS": "150"}
    done = subprocess.run([sys.executable, "-m", "fmforge", "eval", str(run.root), "--against", str(hf),
                           str(adapted), "--max-bytes", "4000"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stdout + done.stderr
    ev = json.loads(run.eval_json.read_text())
    assert ev["against"]["hf"]["max_bytes"] == 4000
    table = shown[shown.index("held-out bits per byte: the run's model"):]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 3}
    assert {"hf", "adapted", "xz -9e", "gzip -9"} <= set(rows) and any(r.startswith("this run") for r in rows)
    # each candidate's row shows its own overall figure
    assert f"{ev['against']['adapted']['bits_per_byte']:.4g}" in rows["adapted"]


def test_plan_decide_puts_each_models_measured_quality_beside_its_cost(exported, monkeypatch):
    run, hf = exported
    monkeypatch.setattr("fmforge.eval.against._native_bf16", lambda device: False)
    evaluate_against(run, [hf], CPU)
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "fmforge", "plan", str(run.config), "--decide", "--json",
                           "--monthly-tokens", "1e6"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    q = json.loads(done.stdout)["quality"]
    ev = json.loads(run.eval_json.read_text())
    own = next(r for r in q["rows"] if "(this run" in r["model"])
    rows = {r["model"]: r for r in q["rows"]}
    assert own["option"] == "train" and own["bits_per_byte"] == ev["bits_per_byte"]
    bought = rows["hf"]
    assert bought["option"] == "use as is" and bought["one_time_usd"] == 0.0
    assert bought["bits_per_byte"] == ev["against"]["hf"]["bits_per_byte"]
    assert bought["per_source"] == {s: r["bits_per_byte"] for s, r in ev["against"]["hf"]["per_source"].items()}
    assert bought["monthly_usd"] > 0  # serving a model costs something every month
    assert q["references"]["xz"] == ev["xz_bits_per_byte"]


def test_the_report_has_a_decision_section_with_the_scored_models(exported, monkeypatch):
    from fmforge.pipeline import write_run_report

    run, hf = exported
    monkeypatch.setattr("fmforge.eval.against._native_bf16", lambda device: False)
    evaluate_against(run, [hf], CPU)
    html = write_run_report(run, device="cpu").read_text()
    ev = json.loads(run.eval_json.read_text())
    decision = html[html.index("Decision: train, customize or use as is"):]
    decision = decision[: decision.index("</section>")] if "</section>" in decision else decision
    assert "use as is" in decision and f"{ev['against']['hf']['bits_per_byte']:.4f}" in decision
    from fmforge.eval.report import fmt

    for source, r in ev["against"]["hf"]["per_source"].items():  # each source's figure, in its column
        assert f"<th>{source}</th>" in decision and f"<td>{fmt(r['bits_per_byte'])}</td>" in decision
    assert "Other models on the same bytes" in html  # and the held-out section's table


def test_two_models_in_directories_of_the_same_name_are_both_kept(exported, tmp_path):
    """Fine-tune outputs are all called ``model`` or ``adapter``: scoring two of them
    must keep both in eval.json, each under a name that says which run made it,
    and scoring one again replaces only its own entry."""
    run, hf = exported
    first = tmp_path / "runs" / "legal-adapt" / "finetune" / "model"
    second = tmp_path / "elsewhere" / "model"
    shutil.copytree(hf, first)
    shutil.copytree(hf, second)

    found = evaluate_against(run, [first, second], CPU, max_bytes=2000)
    again = evaluate_against(run, [second], CPU, max_bytes=2000)

    against = json.loads(run.eval_json.read_text())["against"]
    paths = {name: r["path"] for name, r in against.items()}
    assert str(first.resolve()) in paths.values() and str(second.resolve()) in paths.values()
    assert "legal-adapt" in found  # a fine-tune's output is named by its run
    assert len(found) == 2 and list(again) == [k for k, r in found.items() if r["path"] == str(second.resolve())]
