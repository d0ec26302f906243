"""Any local model on the run's held-out bytes (``fmforge eval RUN --against``):
the run's own Hugging Face export and the run as a candidate score exactly what
the run scores, a candidate's figure is what transformers computes by hand on
the same bytes (with BOS for a Llama-style model trained with it), special-token
text in a document stays text, and a model that cannot be scored this way is
refused with a reason."""

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


def test_the_runs_own_figure_is_its_figure_as_a_candidate_and_its_exports(exported):
    """One arithmetic for every row: float32 by default (no bf16 autocast, whatever
    the CPU), overall the sum over per-source streams for the run and for every
    candidate. The run scored as a candidate, and its export, give the eval
    stage's own figures (failed before: bf16 on a CPU with native bf16, and the
    run's overall from its interleaved split)."""
    run, hf = exported
    found = evaluate_against(run, [hf, run.root], CPU)
    ev = json.loads(run.eval_json.read_text())
    own = ev["steps"][str(ev["step"])]
    assert own["dtype"] == "float32" and own["overall_is"] == "sum over per-source streams"
    for name in ("hf", run.root.resolve().name):
        r = found[name]
        assert r["dtype"] == "float32" and r["overall_is"] == own["overall_is"]
        assert r["bits_per_byte"] == pytest.approx(ev["bits_per_byte"], abs=1e-4)
        assert r["bytes"] == ev["bytes"]
        for source, mine in ev["per_source"].items():
            assert r["per_source"][source]["bits_per_byte"] == pytest.approx(mine["bits_per_byte"], abs=1e-4)
            assert r["per_source"][source]["bytes"] == mine["bytes"]
        assert r["convention"]["bos"] is False and r["convention"]["separator"] == "<|endoftext|>"
    assert own["convention"] == found["hf"]["convention"]
    assert ev["against"]["hf"]["bits_per_byte"] == found["hf"]["bits_per_byte"]  # recorded in eval.json


def test_bfloat16_scores_every_row_in_bf16_the_run_included(exported):
    run, hf = exported
    exact = evaluate_against(run, [hf], CPU, max_bytes=3000)["hf"]
    found = evaluate_against(run, [hf], CPU, max_bytes=3000, dtype="bfloat16")
    assert set(found) == {"hf", run.root.resolve().name}  # the run itself, in the table's precision
    for r in found.values():
        assert r["dtype"] == "bfloat16"
        assert r["bits_per_byte"] == pytest.approx(exact["bits_per_byte"], rel=0.02)
    with pytest.raises(CandidateError, match="--dtype float16: choose one of float32, bfloat16"):
        evaluate_against(run, [hf], CPU, dtype="float16")


def test_a_candidates_figure_is_what_transformers_computes_on_the_same_bytes(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, hf = exported
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
    # each candidate's row shows its own overall figure, and how it was scored
    assert f"{ev['against']['adapted']['bits_per_byte']:.4g}" in rows["adapted"]
    assert "doc <|endoftext|>, float32" in rows["adapted"]
    assert "sum over the per-source streams" in table


def test_plan_decide_puts_each_models_measured_quality_beside_its_cost(exported):
    run, hf = exported
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


def test_the_report_has_a_decision_section_with_the_scored_models(exported):
    from fmforge.pipeline import write_run_report

    run, hf = exported
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


# --- a Llama-style candidate: trained with <s> at the start of every sequence ---

SPECIAL_TEXT = ["<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>"]


def _llama_tokenizer(out: Path, texts: list[str], post_processor: bool, add_bos_token: bool | None) -> None:
    """A byte-level BPE with Llama's special tokens (text round-trips); BOS added by
    its post-processor (as Llama's tokenizer.json does) and/or the config's flag."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>"}
    if add_bos_token is not None:
        conf["add_bos_token"] = add_bos_token
    (out / "tokenizer_config.json").write_text(json.dumps(conf))


def _llama_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=False))


@pytest.fixture(scope="module")
def llama(exported, tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM trained (60 steps, seconds) on the run's training
    text, every sequence opening with <s> as Llama's pretraining does, and every
    document too."""
    from fmforge.data.shards import iter_split_records

    run, _ = exported
    out = tmp_path_factory.mktemp("llama") / "llama"
    texts = [r["text"] for r in iter_split_records(run.data, "train", columns=("text",))]
    _llama_tokenizer(out, texts, post_processor=True, add_bos_token=True)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    model = _llama_model(tok.get_vocab_size())
    # the packed stream <s> doc </s> <s> doc </s> ..., cut into windows that each open with <s>
    stream = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream += [1] + enc.ids + [2]
    stream = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(len(stream) - 33, (16,), generator=gen)
        batch = torch.stack([stream[s: s + 32] for s in starts])
        batch[:, 0] = 1
        labels = batch.masked_fill(batch == 1, -100)  # <s> is context, never a target
        loss = model(input_ids=batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out))
    return out


def _by_hand(model, tok, documents: dict[str, list[str]], bos: bool) -> float:
    """Bits per byte by hand from the model's forward and log_softmax: per source,
    [<s>] doc </s> [<s>] doc </s> ... (or </s> doc </s> ... without BOS), windows of
    the model's context; with BOS a window's first input is <s> and <s> is never
    a scored target."""
    window, bos_id, eos_id = model.config.max_position_embeddings, tok.bos_token_id, tok.eos_token_id
    nats, n_bytes = 0.0, 0
    for texts in documents.values():
        ids = [] if bos else [eos_id]
        for text in texts:
            ids += ([bos_id] if bos else []) + tok.encode(text, add_special_tokens=False) + [eos_id]
            n_bytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, window):
            x = torch.tensor(ids[start: start + window + 1])
            inputs, targets = x[:-1].clone(), x[1:]
            if bos:
                inputs[0] = bos_id
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=inputs[None]).logits[0].float(), -1)
            picked = logp[torch.arange(len(targets)), targets]
            nats -= float(picked[targets != bos_id].sum() if bos else picked.sum())
    return nats / math.log(2) / n_bytes


def test_a_llama_style_candidate_is_scored_with_bos_as_it_was_trained(exported, llama):
    """Failed before: every candidate got [eos] doc [eos] ..., no BOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = exported
    found = evaluate_against(run, [llama], CPU)["llama"]
    model = AutoModelForCausalLM.from_pretrained(str(llama), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(llama), local_files_only=True)
    documents = heldout_documents(run)
    with_bos, without = _by_hand(model, tok, documents, bos=True), _by_hand(model, tok, documents, bos=False)
    assert found["bits_per_byte"] == pytest.approx(with_bos, abs=1e-4)
    # A different figure (1.000 against 0.957 here): a model this small gains nothing
    # from BOS and loses a token of context per window; a real Llama or Gemma,
    # whose attention leans on position 0's BOS, degrades without it.
    assert abs(without - with_bos) > 0.01
    conv = json.loads(run.eval_json.read_text())["against"]["llama"]["convention"]
    assert (conv["bos"], conv["bos_token"], conv["separator"]) == (True, "<s>", "</s>")


@pytest.mark.parametrize("post_processor,add_bos_token,bos", [
    (True, None, True),     # the tokenizer adds <s> when asked for special tokens
    (False, True, True),    # only tokenizer_config.json says so (transformers ignores it here)
    (False, False, False),  # neither: [eos] doc [eos] ...
])
def test_bos_follows_the_tokenizers_own_encoding_or_its_config(exported, tmp_path, post_processor,
                                                             add_bos_token, bos):
    run, hf = exported
    out = tmp_path / "llama"
    _llama_tokenizer(out, ["def f(x): return x", "The cat sat on the mat."], post_processor, add_bos_token)
    _llama_model(320).save_pretrained(str(out))
    candidate = load_candidate(out, CPU)
    assert candidate.convention.bos == bos
    assert candidate.convention.bos_id == (1 if bos else None) and candidate.convention.eos_id == 2
    assert load_candidate(hf, CPU).convention.bos is False  # fmforge's own tokenizer: no BOS


def test_special_token_text_in_a_document_stays_text_for_every_candidate(exported, llama):
    """A document about tokenizers mentions <s>, </s>, <unk>, <|endoftext|> and
    <|im_start|>: for every candidate the only special ids in the stream are the
    separators (and BOS) put between documents, and a Llama-family candidate is not
    refused as "not byte-level" over <unk>. Failed before: special ids inside
    documents, and the Llama candidate refused."""
    from tokenizers import Tokenizer

    from fmforge.eval.against import candidate_stream, score_candidate

    run, hf = exported
    docs = [f"a page about tokenizers: {s} marks a boundary." for s in SPECIAL_TEXT]
    docs.append("all of them: " + " ".join(SPECIAL_TEXT))
    scored = score_candidate(load_candidate(llama, CPU), {"tokenizers": docs}, CPU)
    assert scored["bits_per_byte"] > 0
    for path, tok_file in ((llama, llama / "tokenizer.json"), (hf, hf / "tokenizer.json"),
                           (run.root, run.tokenizer / "tokenizer.json")):
        special = set(Tokenizer.from_file(str(tok_file)).get_added_tokens_decoder())
        candidate = load_candidate(path, CPU)
        stream = candidate_stream(candidate, docs).tolist()
        bos, eos = candidate.convention.bos_id, candidate.convention.eos_id
        at = [(i, t) for i, t in enumerate(stream) if t in special]
        assert [t for _, t in at] == ([bos, eos] * len(docs) if bos is not None else [eos] * (len(docs) + 1)), path
        cuts = [i for i, _ in at]
        spans = [stream[a + 1: b] for a, b in zip(cuts, cuts[1:])]
        assert [candidate.decode(ids) for ids in (spans if bos is None else spans[0::2])] == docs


# --- another fmforge run as a candidate (issue 32: mutmut's survivors of _fmforge_candidate) ---


def test_another_fmforge_run_is_recorded_as_one_and_planned_as_training(exported):
    """docs/planner.md: a candidate that is another fmforge run is a "train"
    option (with its own plan and metrics), a Hugging Face model "use as is".
    The decision reads the ``kind`` eval.json records for the candidate."""
    run, hf = exported
    name = run.root.resolve().name
    found = evaluate_against(run, [run.root, hf], CPU, max_bytes=2000)
    saved = json.loads(run.eval_json.read_text())["against"]
    assert found[name]["kind"] == saved[name]["kind"] == "fmforge"
    assert saved["hf"]["kind"] == "hf"
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "fmforge", "plan", str(run.config), "--decide", "--json",
                           "--monthly-tokens", "1e6"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["model"]: r for r in json.loads(done.stdout)["quality"]["rows"]}
    assert rows[name]["option"] == "train" and rows["hf"]["option"] == "use as is"


def test_a_run_whose_tokenizer_adds_a_start_token_is_scored_as_its_tokenize_stage_encoded(exported, tmp_path):
    """A run that brought its own tokenizer (``tokenizer.path``) keeps that
    tokenizer's post-processor, e.g. Llama 3's, which puts a start token first when
    asked for special tokens. Every candidate's documents are encoded without
    special tokens (docs/evaluation.md), as the run's tokenize stage encoded its
    training text, so scored as a candidate the run must give the eval
    stage's own figure, not a stream with an extra token in every document (or a
    refusal, the decoded text then differing from the document)."""
    from tokenizers import Tokenizer, processors

    run, _ = exported
    other = tmp_path / "byo-run"
    shutil.copytree(run.root, other)
    tok_file = other / "tokenizer" / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    special = sorted(t.content for t in tok.get_added_tokens_decoder().values())
    start = next((t for t in special if t != "<|endoftext|>"), special[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{start} $A",
                                                       special_tokens=[(start, tok.token_to_id(start))])
    tok.save(str(tok_file))
    assert Tokenizer.from_file(str(tok_file)).encode("a").ids[0] == tok.token_to_id(start)  # it adds it
    found = evaluate_against(run, [other], CPU)["byo-run"]
    ev = json.loads(run.eval_json.read_text())
    assert found["kind"] == "fmforge" and found["convention"]["bos"] is False
    assert found["bits_per_byte"] == pytest.approx(ev["bits_per_byte"], abs=1e-4)
    for source, mine in ev["per_source"].items():
        assert found["per_source"][source]["bits_per_byte"] == pytest.approx(mine["bits_per_byte"], abs=1e-4)
