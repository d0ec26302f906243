"""``fmforge eval RUN --against`` piece by piece, without a trained run (fast,
so that each line of eval/against.py is checked by a test that runs in
seconds): bits per byte of a uniform model worked out by hand, a tiny random
Llama scored exactly as transformers computes it by hand on the same bytes (with
and without BOS, as a PEFT adapter too), and each refusal with its message."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from fmforge.errors import UserError
from fmforge.eval import against
from fmforge.eval.against import (
    Candidate,
    CandidateError,
    candidate_name,
    candidate_stream,
    evaluate_against,
    heldout_documents,
    load_candidate,
    score_candidate,
)
from fmforge.rundir import RunDir
from fmforge.tokenizer.stream import Convention

CPU = torch.device("cpu")


class Uniform(torch.nn.Module):
    """Every next token equally likely among ``vocab``: ln(vocab) nats each."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def byte_candidate(vocab: int = 257, bos: bool = False, context: int = 8, decode=None, unk_id=None) -> Candidate:
    """A byte-level candidate: one token per UTF-8 byte, end-of-text 256 (and BOS 257)."""
    return Candidate(
        path=Path("/models/bytes"), name="bytes", kind="hf", model=Uniform(vocab),
        encode=lambda docs: [list(d.encode("utf-8")) for d in docs],
        decode=decode or (lambda ids: bytes(ids).decode("utf-8")),
        convention=Convention(eos_id=256, eos_token="<eot>", bos_id=257 if bos else None,
                              bos_token="<bos>" if bos else None),
        context=context, params=1234, unk_id=unk_id)


DOCS = {"a": ["abc", "héllo"], "b": ["xyz"]}  # 3 + 6 bytes (é is two), and 3


@pytest.mark.parametrize("bos", [False, True])
def test_a_uniform_model_costs_log2_vocab_bits_for_every_token_and_separator(bos):
    vocab = 258 if bos else 257
    out = score_candidate(byte_candidate(vocab, bos=bos), DOCS, CPU)
    # source a: 9 document bytes + 2 closing separators are predicted (the first token, or BOS, never is)
    bits = math.log2(vocab)
    assert out["per_source"]["a"] == {"bits_per_byte": pytest.approx(11 * bits / 9),
                                      "nats": pytest.approx(11 * math.log(vocab)), "tokens": 11, "bytes": 9,
                                      "documents": 2}
    assert out["per_source"]["b"]["bits_per_byte"] == pytest.approx(4 * bits / 3)
    # overall: the sum over the sources' streams, not the mean of their figures
    assert out["bits_per_byte"] == pytest.approx(15 * bits / 12)
    assert (out["bytes"], out["tokens"]) == (12, 15)
    assert out["stride"] == 8 and out["context"] == 8 and out["dtype"] == "float32"
    assert out["params"] == 1234 and out["name"] == "bytes" and out["kind"] == "hf"
    assert out["overall_is"] == "sum over per-source streams"
    assert out["convention"]["bos"] is bos
    assert out["path"] == str(Path("/models/bytes").resolve())


def test_a_stride_is_checked_against_the_window():
    cand = byte_candidate(context=8)
    for stride in (0, 9, -1):
        with pytest.raises(CandidateError, match=rf"--stride {stride} must be between 1 and the window "
                                                 r"\(8 tokens for bytes\)"):
            score_candidate(cand, DOCS, CPU, stride=stride)
    for stride in (1, 8):  # each token is still scored once
        out = score_candidate(cand, DOCS, CPU, stride=stride)
        assert out["tokens"] == 15 and out["stride"] == stride


def test_an_unknown_precision_is_refused_before_any_work(tmp_path):
    for call in (lambda: score_candidate(byte_candidate(), DOCS, CPU, dtype="float16"),
                 lambda: load_candidate(tmp_path, CPU, dtype="float16"),
                 lambda: evaluate_against(RunDir(tmp_path), [], CPU, dtype="float16")):
        with pytest.raises(CandidateError, match=r"^--dtype float16: choose one of float32, bfloat16$"):
            call()


def test_bfloat16_scores_under_autocast():
    out = score_candidate(byte_candidate(), DOCS, CPU, dtype="bfloat16")
    assert out["dtype"] == "bfloat16" and out["bits_per_byte"] == pytest.approx(15 * math.log2(257) / 12, rel=1e-2)


def test_text_the_tokenizer_cannot_give_back_is_refused_near_where_it_differs():
    lower = byte_candidate(decode=lambda ids: bytes(ids).decode("utf-8").lower())
    text = "all lower case until HERE and more text after it"
    # it differs at character 21 ("H"): the 20 characters either side
    with pytest.raises(CandidateError, match=r"/models/bytes: its tokenizer cannot encode the held-out text "
                                             r"exactly .* near 'll lower case until HERE and more text a'"):
        candidate_stream(lower, ["fine", text])
    unk = byte_candidate(unk_id=ord("q"))
    with pytest.raises(CandidateError, match="near 'q'"):
        candidate_stream(unk, ["q"])
    shorter = byte_candidate(decode=lambda ids: bytes(ids).decode("utf-8")[:-1])
    # 34 characters given back as 33: it differs at the end, shown from 20 characters before it
    with pytest.raises(CandidateError, match=r"near 'x{17}abcd'"):
        candidate_stream(shorter, ["x" * 30 + "abcd"])
    stream = candidate_stream(byte_candidate(unk_id=999), ["ab", "c"])
    assert stream.tolist() == [256, 97, 98, 256, 99, 256]
    with_bos = candidate_stream(byte_candidate(bos=True), ["ab", "c"])
    assert with_bos.tolist() == [257, 97, 98, 256, 257, 99, 256]


def _heldout(monkeypatch, docs):
    monkeypatch.setattr(against, "heldout_texts", lambda run: {k: list(v) for k, v in docs.items()})


def test_max_bytes_keeps_each_sources_share_and_at_least_one_document(monkeypatch, tmp_path):
    _heldout(monkeypatch, {"z-src": ["z" * 10], "a-src": ["a" * 10, "b" * 10, "c" * 10]})
    run = RunDir(tmp_path)
    everything = heldout_documents(run)
    assert list(everything) == ["a-src", "z-src"] and len(everything["a-src"]) == 3
    # 20 bytes of 40: a-src may keep 15 (one document of 10, a second would make 20), z-src 5 (one anyway)
    assert heldout_documents(run, 20) == {"a-src": ["a" * 10], "z-src": ["z" * 10]}
    # 40 bytes: a-src's share is 30, all three fit exactly
    assert heldout_documents(run, 40)["a-src"] == ["a" * 10, "b" * 10, "c" * 10]
    # 36: a-src's 27 holds two; bytes, not characters, are counted (é is 2 bytes)
    assert len(heldout_documents(run, 36)["a-src"]) == 2
    _heldout(monkeypatch, {"s": ["é" * 5, "e" * 5]})
    assert heldout_documents(run, 12)["s"] == ["é" * 5]  # 10 bytes; the second would make 15 > 12
    _heldout(monkeypatch, {})
    with pytest.raises(CandidateError, match=r"has no held-out documents: raise data.val_fraction"):
        heldout_documents(run)


def test_a_candidate_is_named_by_its_directory_then_by_its_parents(tmp_path):
    model = tmp_path / "zoo" / "big" / "model"
    other = tmp_path / "elsewhere" / "model"
    assert candidate_name(model, {}) == "model"
    assert candidate_name(model, {"model": str(model.resolve())}) == "model"  # the same path keeps its name
    assert candidate_name(other, {"model": str(model.resolve())}) == "elsewhere/model"
    assert candidate_name(other, {"model": str(model.resolve()), "elsewhere/model": "x"}) == \
        f"{tmp_path.name}/elsewhere/model"
    # a fine-tune's output is named by its run
    tuned = tmp_path / "runs" / "legal" / "finetune" / "adapter"
    assert candidate_name(tuned, {}) == "legal"
    assert candidate_name(tuned, {"legal": "/somewhere/else"}) == "runs/legal"


# --- real Hugging Face candidates: a tiny random Llama with a byte-level BPE ---

TEXTS = ["def f(x): return x + 1", "The cat sat on the mat.", "naïve café, 3 € each"]


def _tokenizer(out: Path, add_bos: bool, eos: bool = True, texts: list[str] = TEXTS) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "unk_token": "<unk>"}
    if eos:
        conf["eos_token"] = "</s>"
    (out / "tokenizer_config.json").write_text(json.dumps(conf))


def _llama(out: Path, vocab: int, positions: int = 16, eos_id=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=positions, bos_token_id=1, eos_token_id=eos_id,
        tie_word_embeddings=False))
    model.save_pretrained(str(out))
    return model


def _lora_adapter(base: Path, adapter: Path) -> Path:
    """A LoRA adapter of the model saved at ``base``, its config pointing there."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(adapter))
    conf = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": str(base)}))
    return adapter


def _by_hand(model, tok, documents, bos: bool, window: int) -> float:
    """transformers' forward and log_softmax over [<s>] doc </s> ... in windows of ``window``."""
    nats, n_bytes = 0.0, 0
    for texts in documents.values():
        ids = [] if bos else [tok.eos_token_id]
        for text in texts:
            ids += ([tok.bos_token_id] if bos else []) + tok.encode(text, add_special_tokens=False) + \
                [tok.eos_token_id]
            n_bytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, window):
            x = torch.tensor(ids[start: start + window + 1])
            inputs, targets = x[:-1].clone(), x[1:]
            if bos:
                inputs[0] = tok.bos_token_id
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=inputs[None]).logits[0].float(), -1)
            picked = logp[torch.arange(len(targets)), targets]
            nats -= float(picked[targets != tok.bos_token_id].sum() if bos else picked.sum())
    return nats / math.log(2) / n_bytes


@pytest.mark.parametrize("bos", [False, True])
def test_a_hugging_face_model_scores_what_transformers_computes(tmp_path, bos):
    from transformers import AutoTokenizer

    out = tmp_path / "llama"
    _tokenizer(out, add_bos=bos)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = _llama(out, len(tok)).eval()
    cand = load_candidate(out, CPU)
    assert cand.kind == "hf" and cand.context == 16 and cand.name == "llama"
    assert cand.params == sum(p.numel() for p in model.parameters())
    assert cand.convention.eos_id == 2 and cand.convention.bos_id == (1 if bos else None)
    assert cand.convention.eos_token == "</s>" and cand.unk_id == 0
    docs = {"code": TEXTS[:1] * 3, "prose": TEXTS[1:]}
    scored = score_candidate(cand, docs, CPU)
    assert scored["bits_per_byte"] == pytest.approx(_by_hand(model, tok, docs, bos, 16), rel=1e-5)
    # special-token text in a document is text
    ids = cand.encode(["<s> and </s>"])[0]
    assert 1 not in ids and 2 not in ids and cand.decode(ids) == "<s> and </s>"


def test_a_long_context_is_cut_to_the_longest_window_scored(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "long"
    _tokenizer(out, add_bos=False)
    _llama(out, len(AutoTokenizer.from_pretrained(str(out))), positions=8192)
    assert load_candidate(out, CPU).context == 4096


def test_a_tokenizer_without_end_of_text_takes_the_configs_or_is_refused(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "noeos"
    _tokenizer(out, add_bos=False, eos=False)
    vocab = len(AutoTokenizer.from_pretrained(str(out)))
    _llama(out, vocab, eos_id=[2, 0])  # the config's list: its first
    assert load_candidate(out, CPU).convention.eos_id == 2
    _llama(out, vocab, eos_id=None)
    with pytest.raises(CandidateError, match=r"its tokenizer has no end-of-text token to join documents with"):
        load_candidate(out, CPU)


def test_a_peft_adapter_is_scored_merged_on_its_base_with_the_bases_tokenizer(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    tok = AutoTokenizer.from_pretrained(str(base))
    _llama(base, len(tok))
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    conf = json.loads((adapter / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(conf))

    cand = load_candidate(adapter, CPU)
    assert cand.kind == "peft" and cand.name == "adapter"
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    merged = merged.merge_and_unload().eval()
    assert cand.params == sum(p.numel() for p in merged.parameters())  # merged: no adapter weights left
    docs = {"prose": TEXTS}
    expected = _by_hand(merged, tok, docs, False, 16)
    assert score_candidate(cand, docs, CPU)["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    base_only = _by_hand(AutoModelForCausalLM.from_pretrained(str(base)).eval(), tok, docs, False, 16)
    assert abs(base_only - expected) > 1e-4  # the adapter changed the figure


def test_what_is_not_a_causal_model_is_refused_with_the_reason(tmp_path):
    with pytest.raises(CandidateError, match=r"^--against .*missing: no such directory$"):
        load_candidate(tmp_path / "missing", CPU)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CandidateError, match=r"not a model: expected a Hugging Face model directory \(config.json\), "
                                             r"a PEFT adapter directory \(adapter_config.json\) or an fmforge run"):
        load_candidate(empty, CPU)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CandidateError, match=r"config.json is not a model configuration transformers reads"):
        load_candidate(broken, CPU)
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    with pytest.raises(CandidateError, match=r"ResNetModel is not a causal language model \(transformers has no "
                                             r"AutoModelForCausalLM for it\)"):
        load_candidate(vision, CPU)
    # a run directory without checkpoints is not taken for an fmforge run
    (empty / "config.yaml").write_text("name: x\n")
    with pytest.raises(CandidateError, match="not a model"):
        load_candidate(empty, CPU)


class _Tok:
    def __init__(self, bos, eos, adds):
        self.bos_token_id, self.eos_token_id, self._adds = bos, eos, adds

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([self.bos_token_id] if self._adds and add_special_tokens else []) + [40]}


@pytest.mark.parametrize("bos, eos, adds, config, expected", [
    (None, 2, False, None, None),                      # no BOS token at all
    (2, 2, True, {"add_bos_token": True}, None),       # BOS is the separator: nothing separate
    (1, 2, True, None, 1),                             # added when asked for special tokens
    (1, 2, False, {"add_bos_token": True}, 1),         # only the config says so
    (1, 2, False, {"add_bos_token": False}, None),
    (1, 2, False, {"add_bos_token": "yes"}, None),     # only a JSON true counts
    (1, 2, False, None, None),
])
def test_bos_is_the_tokenizers_own_or_its_configs(tmp_path, bos, eos, adds, config, expected):
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert against._bos_id(_Tok(bos, eos, adds), tmp_path) == expected


def test_a_damaged_tokenizer_config_is_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(CandidateError, match=r"tokenizer_config.json is not valid JSON"):
        against._bos_id(_Tok(1, 2, False), tmp_path)


def test_evaluate_against_records_each_candidate_by_name(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    _heldout(monkeypatch, {"prose": TEXTS[1:], "code": TEXTS[:1]})
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    first, second = tmp_path / "zoo" / "m", tmp_path / "shed" / "m"
    for out in (first, second):
        _tokenizer(out, add_bos=False)
        _llama(out, len(AutoTokenizer.from_pretrained(str(out))))
    found = evaluate_against(run, [first, second], CPU, max_bytes=10_000)
    assert list(found) == ["m", "shed/m"]
    saved = json.loads(run.eval_json.read_text())["against"]
    assert saved["m"]["path"] == str(first.resolve()) and saved["shed/m"]["path"] == str(second.resolve())
    assert saved["m"]["max_bytes"] == 10_000 and saved["m"]["bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert saved["m"]["bits_per_byte"] == pytest.approx(found["m"]["bits_per_byte"])
    # scored again without max_bytes: the same name (its path holds it), no max_bytes
    again = evaluate_against(run, [first], CPU)
    assert list(again) == ["m"] and "max_bytes" not in again["m"]


# --- issue 32: what mutmut's survivors showed unchecked (each test fails with its mutant) ---


class KnowsAfterFirst(torch.nn.Module):
    """Certain of the next token (``follow[current]``) at every position of a window
    but the first, where it has seen nothing before and is uniform: a target at a
    window's first position costs ln(vocab) nats, every other target nothing
    (exp(-1e4) is 0 in float32)."""

    def __init__(self, vocab: int, follow: dict[int, int]):
        super().__init__()
        self.vocab, self.follow = vocab, follow

    def forward(self, ids):
        nxt = torch.tensor([[self.follow.get(int(t), 0) for t in row] for row in ids])
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float() * 1e4
        logits[:, 0] = 0.0
        return logits


ALPHABET = "abcdefghijklmnop"  # one document of 16 bytes: the stream [eot] a b ... p [eot], 17 targets


def _knowing_candidate(path: Path = Path("/models/bytes")) -> Candidate:
    follow = {256: ord("a"), ord("p"): 256, **{c: c + 1 for c in range(ord("a"), ord("p"))}}
    cand = byte_candidate(context=8)
    cand.model, cand.path = KnowsAfterFirst(257, follow), path
    return cand


@pytest.mark.parametrize("stride, first_positions", [(None, 3), (8, 3), (4, 1), (1, 1)])
def test_a_stride_gives_every_window_after_the_first_its_context(monkeypatch, tmp_path, stride, first_positions):
    """docs/evaluation.md: windows of the context, non-overlapping (17 targets in
    windows of 8: three start a window, each with no context), or sliding by
    --stride (each token scored once with at least window - stride tokens of
    context: only the very first target has none). Through evaluate_against too,
    which must pass --stride on."""
    bits = first_positions * math.log2(257) / 16
    out = score_candidate(_knowing_candidate(), {"s": [ALPHABET]}, CPU, stride=stride)
    assert (out["tokens"], out["bytes"]) == (17, 16)
    assert out["bits_per_byte"] == pytest.approx(bits, rel=1e-6)
    _heldout(monkeypatch, {"s": [ALPHABET]})
    monkeypatch.setattr(against, "load_candidate", lambda path, device, dtype: _knowing_candidate(Path(path)))
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    found = evaluate_against(run, [tmp_path / "m"], CPU, stride=stride)["m"]
    assert found["bits_per_byte"] == pytest.approx(bits, rel=1e-6) and found["stride"] == (stride or 8)


class _Recorder(torch.nn.Module):
    """Logits from a linear layer; records the dtype its product was computed in."""

    def __init__(self, vocab: int):
        super().__init__()
        self.lin = torch.nn.Linear(4, vocab)
        self.seen: list[torch.dtype] = []

    def forward(self, ids):
        h = self.lin(torch.ones(*ids.shape, 4))
        self.seen.append(h.dtype)
        return h


@pytest.mark.parametrize("dtype, computed_in", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_bfloat16_runs_the_candidates_products_in_bf16_and_float32_never(dtype, computed_in):
    """docs/evaluation.md: --dtype bfloat16 runs every candidate under bf16
    autocast; float32 (the default) is exact float32 on every device."""
    cand = byte_candidate()
    cand.model = _Recorder(257)
    out = score_candidate(cand, DOCS, CPU, dtype=dtype)
    assert out["dtype"] == dtype and cand.model.seen and set(cand.model.seen) == {computed_in}


def _fake_loads(monkeypatch):
    monkeypatch.setattr(against, "load_candidate", lambda path, device, dtype: _renamed(path))


def _renamed(path) -> Candidate:
    cand = byte_candidate()
    cand.path = Path(path)
    return cand


def test_max_bytes_limits_what_evaluate_against_scores(monkeypatch, tmp_path):
    """--max-bytes 15 of 30: a prefix of the documents, about 15 bytes (one of 10;
    two would make 20), and eval.json says so."""
    _heldout(monkeypatch, {"s": ["a" * 10, "b" * 10, "c" * 10]})
    _fake_loads(monkeypatch)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    found = evaluate_against(run, [tmp_path / "m"], CPU, max_bytes=15)["m"]
    assert (found["bytes"], found["per_source"]["s"]["documents"], found["max_bytes"]) == (10, 1, 15)
    assert found["tokens"] == 11  # 10 bytes and the closing separator


def test_names_held_in_eval_json_stay_with_their_paths_across_calls(monkeypatch, tmp_path):
    """Scoring zoo/m, then in a later command shed/m, keeps both (the second under
    'shed/m'); one path given twice is one candidate, scored under one name."""
    _heldout(monkeypatch, {"s": ["abc"]})
    _fake_loads(monkeypatch)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    first, second = tmp_path / "zoo" / "m", tmp_path / "shed" / "m"
    evaluate_against(run, [first], CPU)
    assert list(evaluate_against(run, [second], CPU)) == ["shed/m"]
    saved = json.loads(run.eval_json.read_text())["against"]
    assert {k: v["path"] for k, v in saved.items()} == {"m": str(first.resolve()), "shed/m": str(second.resolve())}
    assert list(evaluate_against(run, [first, first], CPU)) == ["m"]
    assert set(json.loads(run.eval_json.read_text())["against"]) == {"m", "shed/m"}


def test_two_models_under_top_level_directories_get_two_names():
    """/srv/model beside /mnt/model: the second takes its one parent's name."""
    assert candidate_name(Path("/srv/model"), {"model": "/mnt/model"}) == "srv/model"


def test_refusals_say_what_to_do_in_full(monkeypatch, tmp_path):
    """Each refusal's whole message, its advice included (error text is interface)."""
    _heldout(monkeypatch, {})
    with pytest.raises(CandidateError, match=r"has no held-out documents: raise data.val_fraction and rerun its "
                                             r"data stage$"):
        heldout_documents(RunDir(tmp_path))
    with pytest.raises(CandidateError, match=r"bits per byte would count the wrong bytes\. Score a model whose "
                                             r"tokenizer is byte-level \(byte BPE, or byte fallback\)$"):
        candidate_stream(byte_candidate(unk_id=ord("q")), ["q"])
    two = tmp_path / "two"
    two.mkdir()
    (two / "config.json").write_text(json.dumps({"model_type": "resnet",
                                                 "architectures": ["ResNetModel", "ResNetForImageClassification"]}))
    with pytest.raises(CandidateError, match=r"^--against .*two: ResNetModel, ResNetForImageClassification is not a "
                                             r"causal language model \(transformers has no AutoModelForCausalLM for "
                                             r"it\): bits per byte needs a model that predicts the next token$"):
        load_candidate(two, CPU)
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed: importing it fails
    with pytest.raises(CandidateError, match=r"^scoring .*two needs transformers: pip install 'fmforge\[hf\]' \("):
        load_candidate(two, CPU)


def test_bfloat16_loads_a_hugging_face_models_weights_in_bf16(tmp_path):
    """docs/evaluation.md: --dtype bfloat16 loads Hugging Face weights in bf16 (half
    the memory of a large candidate), float32 in float32; a PEFT adapter's base too."""
    from transformers import AutoTokenizer

    out = tmp_path / "llama"
    _tokenizer(out, add_bos=False)
    _llama(out, len(AutoTokenizer.from_pretrained(str(out))))
    adapter = _lora_adapter(out, tmp_path / "adapter")
    for path in (out, adapter):
        for dtype, want in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
            assert {p.dtype for p in load_candidate(path, CPU, dtype=dtype).model.parameters()} == {want}, path


def test_the_tokenizers_end_of_text_wins_over_the_configs(tmp_path):
    """The documents are joined with the tokenizer's eos_token (</s>, id 2); a
    config.json naming another eos_token_id does not change the separator."""
    from transformers import AutoTokenizer

    out = tmp_path / "eos"
    _tokenizer(out, add_bos=False)
    _llama(out, len(AutoTokenizer.from_pretrained(str(out))), eos_id=0)
    cand = load_candidate(out, CPU)
    assert (cand.convention.eos_id, cand.convention.eos_token) == (2, "</s>")


def test_an_adapter_with_its_own_tokenizer_is_scored_with_it(tmp_path):
    """A PEFT adapter directory that ships tokenizer files (a fine-tune that changed
    the tokenizer's settings) is scored with those, not its base's: here its
    tokenizer_config.json says add_bos_token, so documents open with <s>."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    assert load_candidate(adapter, CPU).convention.bos_id is None  # the base's tokenizer: no BOS
    (adapter / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    tok_conf = json.loads((base / "tokenizer_config.json").read_text())
    (adapter / "tokenizer_config.json").write_text(json.dumps({**tok_conf, "add_bos_token": True}))
    cand = load_candidate(adapter, CPU)
    assert (cand.convention.bos_id, cand.convention.bos_token) == (1, "<s>")


# A fine-tune's own vocabulary: the same size and special tokens as the base's, other merges.
OTHER_TEXTS = ["Sat the mat on cat the.", "1 + x return :)x(f fed", "each € 3 ,café naïve", "zzz yyy xxx www"]


def test_an_adapter_shipping_only_tokenizer_json_is_scored_with_it_and_the_bases_special_tokens(tmp_path):
    """An adapter directory with its own tokenizer.json but no tokenizer_config.json:
    the ids are its tokenizer.json's (as the tokenizers library encodes with that
    file), and which tokens are special (<s> first, </s> between documents) comes from
    its base's tokenizer_config.json, not lost: the adapter's file alone names no
    eos_token nor bos_token."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=True)
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    _tokenizer(tmp_path / "tuned", add_bos=True, texts=OTHER_TEXTS)
    (adapter / "tokenizer.json").write_bytes((tmp_path / "tuned" / "tokenizer.json").read_bytes())
    own = Tokenizer.from_file(str(adapter / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(base / "tokenizer.json"))
    expected = [own.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert expected != [theirs.encode(t, add_special_tokens=False).ids for t in TEXTS]  # the two differ

    cand = load_candidate(adapter, CPU)
    assert cand.encode(TEXTS) == expected
    assert [cand.decode(ids) for ids in expected] == TEXTS
    bos = own.encode("a").ids[0]  # what its post-processor puts first: <s>
    assert (cand.convention.bos_id, cand.convention.bos_token) == (bos, "<s>") == (1, "<s>")
    assert (cand.convention.eos_id, cand.convention.eos_token) == (own.token_to_id("</s>"), "</s>")


def test_an_adapter_shipping_only_tokenizer_config_json_is_scored_with_its_settings_on_the_bases_vocabulary(
        tmp_path):
    """An adapter directory with its own tokenizer_config.json but no vocabulary file
    (transformers alone cannot load a tokenizer from it): its settings, here
    add_bos_token, over its base's tokenizer.json; the ids are the base's, as
    transformers encodes them from the base's directory."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    reference = AutoTokenizer.from_pretrained(str(base))
    _llama(base, len(reference))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    tok_conf = json.loads((base / "tokenizer_config.json").read_text())
    (adapter / "tokenizer_config.json").write_text(json.dumps({**tok_conf, "add_bos_token": True}))

    cand = load_candidate(adapter, CPU)
    assert cand.encode(TEXTS) == [reference.encode(t, add_special_tokens=False) for t in TEXTS]
    assert (cand.convention.bos_id, cand.convention.bos_token) == (reference.bos_token_id, "<s>") == (1, "<s>")
    assert (cand.convention.eos_id, cand.convention.eos_token) == (reference.eos_token_id, "</s>")
    # the base's own settings are no BOS: the adapter's file decided it
    assert load_candidate(base, CPU).convention.bos_id is None


def test_an_adapters_half_tokenizer_that_does_not_load_is_named_with_its_base(tmp_path):
    """An adapter's settings without a vocabulary (its tokenizer_config.json, here cut
    short, and special_tokens_map.json) that transformers cannot read over the base's
    vocabulary are refused naming the adapter's files, the base and transformers'
    reason (not the scratch directory they were assembled in), and what to do."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    (adapter / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTok')
    (adapter / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(UserError) as caught:
        load_candidate(adapter, CPU)
    assert re.fullmatch(
        re.escape(f"--against {adapter}: its {adapter}/tokenizer_config.json and {adapter}/special_tokens_map.json "
                  f"over the rest of its base {base}'s tokenizer: transformers cannot load them (")
        + r"Unterminated string starting at: line 1 column 21 \(char 20\)" + re.escape(
            "); repair the adapter's tokenizer files, or remove them to score it with its base's tokenizer"),
        str(caught.value)), str(caught.value)


def test_an_adapter_shipping_only_special_tokens_map_json_keeps_its_bases_tokenizer_config(tmp_path):
    """special_tokens_map.json alone (which tokens are special, nothing more) over a
    base whose tokenizer_config.json says add_bos_token and whose tokenizer.json adds
    no <s> itself: the base's settings stay, so the adapter is scored with <s> as its
    base is (as transformers reads the two files together: the map names the tokens,
    the config the rest)."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    conf = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**conf, "add_bos_token": True}))
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    (adapter / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))

    assert load_candidate(base, CPU).convention.bos_id == 1
    cand = load_candidate(adapter, CPU)
    assert (cand.convention.bos_id, cand.convention.bos_token) == (1, "<s>")
    assert (cand.convention.eos_id, cand.convention.eos_token) == (2, "</s>")


def test_an_adapters_tokenizer_file_linking_to_nothing_is_refused_not_replaced_by_the_bases(tmp_path):
    """An adapter whose tokenizer.json is a link to a file that is gone (a cache
    cleaned, a copy made with links) ships a tokenizer that cannot be read: it is
    refused naming the link and its target, never scored in silence with its base's
    tokenizer (a different one)."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=True)
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    gone = tmp_path / "cache" / "tokenizer.json"
    (adapter / "tokenizer.json").symlink_to(gone)
    with pytest.raises(UserError) as caught:
        load_candidate(adapter, CPU)
    assert str(caught.value) == (
        f"--against {adapter}: {adapter}/tokenizer.json links to {gone}, which does not exist: restore "
        "it, or remove the link (what the adapter's other tokenizer files leave out then comes from its base)")


def _mpt(out: Path, vocab: int, max_seq_len: int):
    from transformers import MptConfig, MptForCausalLM

    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(vocab_size=vocab, d_model=16, n_heads=2, n_layers=1,
                                     max_seq_len=max_seq_len, expansion_ratio=2))
    model.save_pretrained(str(out))
    return model


def test_a_model_whose_config_names_its_context_otherwise_is_scored_in_windows_that_fit(tmp_path):
    """MPT's config says ``max_seq_len`` where Llama's says ``max_position_embeddings``;
    MPT's forward refuses a longer input. A fallback window of 2048 tokens made the
    candidate fail; its own 16 positions give the figure transformers computes."""
    from transformers import AutoTokenizer

    out = tmp_path / "mpt"
    _tokenizer(out, add_bos=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = _mpt(out, len(tok), max_seq_len=16).eval()
    cand = load_candidate(out, CPU)
    assert cand.context == 16
    docs = {"code": TEXTS[:1] * 3, "prose": TEXTS[1:]}
    scored = score_candidate(cand, docs, CPU)
    assert scored["bits_per_byte"] == pytest.approx(_by_hand(model, tok, docs, False, 16), rel=1e-5)


def test_a_model_without_a_position_limit_is_scored_in_windows_of_2048(tmp_path):
    """Mamba's config has no context at all: any window fits, and 2048 tokens is the
    window docs/evaluation.md states for a model with no position limit."""
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    out = tmp_path / "mamba"
    _tokenizer(out, add_bos=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                         state_size=4, expand=2)).eval()
    model.save_pretrained(str(out))
    cand = load_candidate(out, CPU)
    assert cand.context == 2048
    docs = {"prose": TEXTS}
    scored = score_candidate(cand, docs, CPU)
    assert scored["bits_per_byte"] == pytest.approx(_by_hand(model, tok, docs, False, 2048), rel=1e-5)


def test_an_adapters_tokenizer_config_json_alone_outranks_its_bases_special_tokens_map_json(tmp_path):
    """A base that ships special_tokens_map.json beside its tokenizer_config.json (both
    name </s> its end-of-text) and an adapter that ships only its own
    tokenizer_config.json, naming <unk> instead: the adapter's settings replace both of
    the base's files, so documents are joined with <unk>, as transformers loads a
    folder of the adapter's settings and the base's vocabulary. (transformers lets a
    special_tokens_map.json beside a tokenizer_config.json override its tokens: the
    base's map kept there would bring </s> back.)"""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    _tokenizer(base, add_bos=False)
    (base / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    _llama(base, len(AutoTokenizer.from_pretrained(str(base))))
    adapter = _lora_adapter(base, tmp_path / "adapter")
    tok_conf = json.loads((base / "tokenizer_config.json").read_text())
    (adapter / "tokenizer_config.json").write_text(json.dumps({**tok_conf, "eos_token": "<unk>"}))
    reference_dir = tmp_path / "reference"  # exactly the adapter's settings over the base's vocabulary
    reference_dir.mkdir()
    shutil.copy(base / "tokenizer.json", reference_dir)
    shutil.copy(adapter / "tokenizer_config.json", reference_dir)
    reference = AutoTokenizer.from_pretrained(str(reference_dir))
    assert (reference.eos_token, reference.eos_token_id) == ("<unk>", 0)
    # the base's map, beside the adapter's config, would win in transformers
    shutil.copy(base / "special_tokens_map.json", reference_dir)
    assert AutoTokenizer.from_pretrained(str(reference_dir)).eos_token == "</s>"
    assert load_candidate(base, CPU).convention.eos_token == "</s>"

    cand = load_candidate(adapter, CPU)
    assert (cand.convention.eos_id, cand.convention.eos_token) == (0, "<unk>")
    assert cand.convention.bos_id is None
    docs = {"prose": TEXTS}
    # a fresh LoRA adapter leaves its base's weights as they are: the base's model, the reference tokenizer
    expected = _by_hand(AutoModelForCausalLM.from_pretrained(str(base)).eval(), reference, docs, False, 16)
    assert score_candidate(cand, docs, CPU)["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
