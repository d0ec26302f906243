"""GGUF export: read back with gguf's own reader (names, shapes, values, metadata),
a forward pass written the way llama.cpp computes a Llama (interleaved RoPE)
over the file's tensors reproduces our logits, and, where llama-cpp-python is
installed (`make llama-cpp`), llama.cpp itself loads each export and tokenizes,
scores and decodes greedily as fmforge does."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.export.gguf import gguf_tensors
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import load_trained
from fmforge.rundir import RunDir

gguf = pytest.importorskip("gguf")

runner = CliRunner()
PROMPT = "def alpha_1(beta, gamma):\n    return"
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down")


def export(run, path: Path, dtype: str) -> Path:
    result = runner.invoke(app, ["export", "gguf", str(run.root), str(path), "--dtype", dtype])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return path


def field(reader, key: str):
    return reader.get_field(key).contents()


def read_tensors(reader) -> dict[str, np.ndarray]:
    """Every tensor as float32 in PyTorch's (rows, columns) order."""
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_with_llama_names_shapes_and_values(tiny_run, tmp_path, dtype):
    path = export(tiny_run, tmp_path / "model.gguf", dtype)
    trained = load_trained(tiny_run, device="cpu")
    cfg = trained.model.cfg
    reader = gguf.GGUFReader(str(path))

    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.quantization_version") == gguf.GGML_QUANT_VERSION
    hp = {k: field(reader, f"llama.{k}") for k in (
        "context_length", "embedding_length", "block_count", "feed_forward_length",
        "attention.head_count", "attention.head_count_kv", "rope.freq_base",
        "attention.layer_norm_rms_epsilon", "rope.dimension_count")}
    assert hp["context_length"] == cfg.seq_len and hp["embedding_length"] == cfg.d_model
    assert hp["block_count"] == cfg.n_layers and hp["feed_forward_length"] == cfg.ffn_dim
    assert hp["attention.head_count"] == cfg.n_heads
    assert hp["attention.head_count_kv"] == cfg.kv_heads
    assert hp["rope.dimension_count"] == cfg.head_dim
    assert hp["rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert hp["attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)

    # Tokenizer: GPT-2 byte-level BPE, the run's vocabulary in id order, padded to the rows.
    tok_json = json.loads((tiny_run.tokenizer / "tokenizer.json").read_text())
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "llama-bpe"  # the GPT-4 split, as Llama 3 has it
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    for token, i in tok_json["model"]["vocab"].items():
        assert tokens[i] == token
    assert types[trained.eos_id] == gguf.TokenType.CONTROL
    assert len(field(reader, "tokenizer.ggml.merges")) == len(tok_json["model"]["merges"])
    assert field(reader, "tokenizer.ggml.eos_token_id") == trained.eos_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False

    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(cfg.n_layers) for n in LAYER_TENSORS}
    if not cfg.tie_embeddings:
        names.add("output.weight")
    got = read_tensors(reader)
    assert set(got) == names
    want = gguf_tensors(trained.model.state_dict(), cfg)
    types_by_name = {t.name: t.tensor_type for t in reader.tensors}
    for name, ref in want.items():
        assert got[name].shape == ref.shape, name
        err = np.abs(got[name] - ref).max()
        if ref.ndim == 1 or dtype == "f32":
            assert types_by_name[name] == gguf.GGMLQuantizationType.F32, name
            assert err == 0, name
        elif dtype == "f16":
            assert types_by_name[name] == gguf.GGMLQuantizationType.F16, name
            assert err <= np.abs(ref).max() * 2 ** -10, (name, err)
        else:  # q8_0: within one quantisation step of its block (amax/127)
            assert types_by_name[name] == gguf.GGMLQuantizationType.Q8_0, name
            assert err <= np.abs(ref).max() / 127, (name, err)


# The GGUF specification's codes for general.file_type (ggml/docs/gguf.md; llama.h's
# LLAMA_FTYPE_*): 0 ALL_F32, 1 MOSTLY_F16, 7 MOSTLY_Q8_0.
SPEC_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}
LABELS = {"name": "Tiny Code Model", "license": "apache-2.0", "author": "Example Lab",
          "source_url": "https://example.org/models/tiny-code"}


def labelled(run, tmp_path: Path, **export) -> RunDir:
    """A copy of ``run`` labelled after training, as a user does it: an ``export:``
    section added to the run's config.yaml (no stage depends on it)."""
    root = tmp_path / "labelled"
    shutil.copytree(run.root, root)
    raw = yaml.safe_load((root / "config.yaml").read_text())
    raw["export"] = export
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return RunDir(root)


def string_field(reader, key: str) -> str:
    """A metadata value the GGUF spec types as a string (value type 8)."""
    f = reader.get_field(key)
    assert f is not None, f"{key} is missing"
    assert f.types == [gguf.GGUFValueType.STRING], (key, f.types)
    return f.contents()


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_general_metadata_from_the_export_section(tiny_runs, tmp_path, dtype):
    """general.* as the GGUF spec names and types them, from the config's export:
    section; the file type as the spec numbers it; the tokenizer's chat template."""
    run = labelled(tiny_runs["gqa-tied"], tmp_path, **LABELS)
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", dtype)))
    assert string_field(reader, "general.name") == "Tiny Code Model"
    assert string_field(reader, "general.license") == "apache-2.0"
    assert string_field(reader, "general.source.url") == "https://example.org/models/tiny-code"
    assert string_field(reader, "general.author") == "Example Lab"
    assert string_field(reader, "general.quantized_by") == "Example Lab"
    file_type = reader.get_field("general.file_type")
    assert file_type.types == [gguf.GGUFValueType.UINT32]  # the spec's type for it
    assert file_type.contents() == SPEC_FILE_TYPE[dtype]
    template = json.loads((run.tokenizer / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|assistant|>" in template
    assert string_field(reader, "tokenizer.chat_template") == template


def test_gguf_description_summarises_the_model_and_its_data(tiny_run, tmp_path):
    """Without an export: section: the run's name, no license, URL or author (nothing
    invented), fmforge as the quantizer, and a description that gives the
    architecture, torch's count of the parameters, the heads, the context, the
    vocabulary and the training (steps, tokens, sources), and names no path of
    this machine."""
    run = tiny_run
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f16")))
    raw = yaml.safe_load(run.config.read_text())
    assert string_field(reader, "general.name") == raw["name"]
    for key in ("general.license", "general.source.url", "general.author"):
        assert reader.get_field(key) is None, key
    assert string_field(reader, "general.quantized_by") == "fmforge"

    text = string_field(reader, "general.description")
    trained = load_trained(run, device="cpu")
    cfg = trained.model.cfg
    n_params = sum(p.numel() for p in trained.model.parameters())  # the tied head counted once
    state = json.loads(next(run.checkpoints.glob("step-*/trainer_state.json")).read_text())
    for part in ("Llama", f"{n_params:,} parameters", f"{cfg.n_layers} layers",
                 f"{cfg.seq_len:,}-token context", f"{cfg.vocab_size:,}-token byte-level BPE",
                 f"{trained.step:,} steps", f"{state['tokens']:,} tokens",
                 f"{cfg.n_heads} attention heads", *(s["name"] for s in raw["data"]["sources"])):
        assert part in text, (part, text)
    assert "/" not in text and len(text) < 400, text
    # grouped-query attention says how many key/value heads the query heads share
    assert ("key-value" in text) == (cfg.kv_heads != cfg.n_heads), text
    assert cfg.kv_heads == cfg.n_heads or f"{cfg.kv_heads} key-value heads" in text


@pytest.mark.parametrize("n", [6, 7])
def test_gguf_description_names_up_to_six_sources(tiny_runs, tmp_path, n):
    """docs/export.md: the summary names up to six sources, then how many more."""
    run = labelled(tiny_runs["gqa-tied"], tmp_path)
    raw = yaml.safe_load(run.config.read_text())
    first = raw["data"]["sources"][0]
    raw["data"]["sources"] = [{**first, "name": f"src{i}", "paths": [f"{tmp_path}/part{i}/*.py"]}
                              for i in range(n)]
    run.config.write_text(yaml.safe_dump(raw))
    text = field(gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32"))),
                 "general.description")
    six = "on src0, src1, src2, src3, src4, src5"
    assert text.endswith(f"{six}." if n == 6 else f"{six} and 1 more."), text


def test_gguf_description_from_the_config_replaces_the_summary(tiny_runs, tmp_path):
    run = labelled(tiny_runs["gqa-tied"], tmp_path, description="A tiny model of Python code.")
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    assert string_field(reader, "general.description") == "A tiny model of Python code."


def test_a_blank_export_label_is_refused_naming_the_key(tiny_runs, tmp_path):
    run = labelled(tiny_runs["gqa-tied"], tmp_path, license="  ")
    result = runner.invoke(app, ["export", "gguf", str(run.root), str(tmp_path / "m.gguf")])
    assert result.exit_code != 0 and "license" in result.output, result.output
    assert not (tmp_path / "m.gguf").exists()


# llama.cpp's names for the two splits (src/llama-vocab.cpp, llama_vocab::impl::load): a
# name it does not know stops it loading the file ("unknown pre-tokenizer type").
LLAMA_CPP_PRE = {"gpt4": "llama-bpe", "gpt2": "gpt-2"}


def test_gguf_names_each_split_as_llama_cpp_does(split_run, tmp_path):
    split, run = split_run
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    assert field(reader, "tokenizer.ggml.pre") == LLAMA_CPP_PRE[split]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def llama_cpp_logits(t: dict[str, np.ndarray], hp: dict, tokens: list[int]) -> torch.Tensor:
    """A Llama forward the way llama.cpp's LLAMA_ROPE_TYPE_NORM computes it: rotary
    pairs are adjacent dimensions (2i, 2i+1) of a head (Meta's original layout),
    query head h reads key/value head h // (n_head / n_head_kv)."""
    w = {k: torch.from_numpy(v.copy()) for k, v in t.items()}
    n_head, n_kv, eps = hp["n_head"], hp["n_kv"], hp["eps"]
    hd = w["token_embd.weight"].shape[1] // n_head
    n = len(tokens)
    freqs = hp["theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(n, hd // 2, dtype=torch.float64),
                      torch.outer(torch.arange(n, dtype=torch.float64), freqs))

    def rope(x):  # (n, heads, hd)
        c = torch.view_as_complex(x.double().reshape(n, x.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(c * rot[:, None]).reshape(x.shape).float()

    x = w["token_embd.weight"][torch.tensor(tokens)]
    for i in range(hp["n_layer"]):
        b = f"blk.{i}."
        h = rms_norm(x, w[b + "attn_norm.weight"], eps)
        q = rope((h @ w[b + "attn_q.weight"].T).view(n, n_head, hd))
        k = rope((h @ w[b + "attn_k.weight"].T).view(n, n_kv, hd))
        v = (h @ w[b + "attn_v.weight"].T).view(n, n_kv, hd)
        k, v = (z.repeat_interleave(n_head // n_kv, dim=1) for z in (k, v))
        y = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True)
        x = x + y.transpose(0, 1).reshape(n, -1) @ w[b + "attn_output.weight"].T
        h = rms_norm(x, w[b + "ffn_norm.weight"], eps)
        x = x + (F.silu(h @ w[b + "ffn_gate.weight"].T) * (h @ w[b + "ffn_up.weight"].T)) \
            @ w[b + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def test_gguf_tensors_give_our_logits_under_llama_cpp_rope(tiny_run, tmp_path):
    """Checks the q/k permutation: without it the interleaved RoPE would pair the
    wrong dimensions and the logits would differ."""
    path = export(tiny_run, tmp_path / "model.gguf", "f32")
    reader = gguf.GGUFReader(str(path))
    hp = {"n_head": field(reader, "llama.attention.head_count"),
          "n_kv": field(reader, "llama.attention.head_count_kv"),
          "n_layer": field(reader, "llama.block_count"),
          "eps": field(reader, "llama.attention.layer_norm_rms_epsilon"),
          "theta": field(reader, "llama.rope.freq_base")}
    trained = load_trained(tiny_run, device="cpu")
    tokens = torch.randint(0, trained.model.cfg.vocab_size, (48,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ours = trained.model(torch.tensor([tokens]))[0]
    diff = (llama_cpp_logits(read_tensors(reader), hp, tokens) - ours).abs().max().item()
    assert diff < 1e-4, diff


def test_unknown_dtype_is_refused(tiny_runs, tmp_path):
    result = runner.invoke(app, ["export", "gguf", str(tiny_runs["gqa-tied"].root),
                                 str(tmp_path / "m.gguf"), "--dtype", "q4_0"])
    assert result.exit_code == 2 and "q4_0" in result.output
    assert not list(tmp_path.iterdir())


# --- llama.cpp itself (llama-cpp-python), the consumer the file is written for ---

LLAMA_CPP_PROMPTS = (  # short: with a 300-token vocabulary most characters are a token each
    "def alpha_1(beta):\n    return",
    "class Stack:\n    def push(self",
    "for i in range(10):\n\tprint(i",
    "# café: 3 × €2 — naïve",
)
N_GREEDY = 30


# A mark, not importorskip in a fixture: the session's tiny runs are not trained
# just to be skipped.
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: `make llama-cpp` compiles it once (about "
    "7 minutes on 2 cores), caches the wheel outside the clone and installs it into .venv")


@pytest.fixture(scope="module")
def llama_cpp_models(tmp_path_factory):
    """llama.cpp models loaded from our exports, one per (run, dtype, KV-cache type),
    on first use. ``kv="f16"`` is llama.cpp's default cache, as a user runs it;
    ``kv="f32"`` keeps keys and values in float32 as fmforge does."""
    import llama_cpp

    loaded, files = {}, {}

    def get(run, dtype: str, kv: str = "f16"):
        if (str(run.root), dtype) not in files:
            files[str(run.root), dtype] = export(
                run, tmp_path_factory.mktemp("gguf") / f"model-{dtype}.gguf", dtype)
        key = (str(run.root), dtype, kv)
        if key not in loaded:
            cache = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv]
            loaded[key] = llama_cpp.Llama(
                model_path=str(files[str(run.root), dtype]), n_ctx=64, n_batch=64, n_threads=1,
                type_k=cache, type_v=cache, logits_all=True, verbose=False)
        return loaded[key]

    yield get
    for llm in loaded.values():
        llm.close()


@needs_llama_cpp
def test_llama_cpp_reads_the_vocabulary_and_tokenizes_as_we_do(split_run, llama_cpp_models):
    """llama.cpp's own tokenizer, from the file's metadata (the split's name, the
    merges): the same ids as ours for code, tabs, digits, runs of spaces and
    newlines and multi-byte text, and the same text back; the EOS id and the sizes
    as the run has them. Both of fmforge's splits (GPT-4's, the default, and GPT-2's)."""
    _, run = split_run
    llm = llama_cpp_models(run, "f32")
    trained = load_trained(run, device="cpu")
    cfg = trained.model.cfg
    assert (llm.n_vocab(), llm.n_embd()) == (cfg.vocab_size, cfg.d_model)
    assert llm.token_eos() == trained.eos_id
    for text in LLAMA_CPP_PROMPTS + (PROMPT, "x  =  [1,2]\r\n\n\n  y's 12345 ÅÄÖ 你好"):
        ours = trained.tokenizer.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours, text
        assert llm.detokenize(ours).decode() == text


def our_greedy(trained, ids: list[int], n: int) -> list[int]:
    """fmforge's own greedy continuation: the engine behind ``fmforge generate`` and
    the server (KV cache, temperature 0), not stopping at end-of-text."""
    request = GenerationRequest(prompt_ids=ids, max_new_tokens=n, temperature=0, stop_token_ids=[])
    result = Engine(trained, max_batch=1).generate([request])[0]
    assert len(result.token_ids) == n
    return result.token_ids


def llama_cpp_has_amx_int8() -> bool:
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()


# How far below our best logit llama.cpp's greedy token may score in our model: two
# choices this close are a tie at the file's precision (llama.cpp also rounds the
# activations to f16 / 8 bits for those matrices, and keeps an f16 KV cache). 3-8x
# the largest |logit difference| measured on these runs, whose logits span ±8:
# 3.3e-3 (f32), 6.1e-3 (f16), 0.12 (q8_0) (docs/export.md, "Checked by llama.cpp itself").
TIE = {"f32": 1e-2, "f16": 5e-2, "q8_0": 0.5}


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_greedy_tokens_equal_ours(decisive_run, llama_cpp_models, dtype):
    """llama.cpp's greedy continuation of each prompt (its default f16 KV cache) is
    the one fmforge's engine produces. Where the two part, it may only be at a tie:
    every token llama.cpp chose, along its own path, must be our argmax or within
    TIE of it, so a wrong weight, RoPE layout, norm or tokenizer still fails."""
    if dtype == "q8_0" and llama_cpp_has_amx_int8():
        # It would take the whole pytest process down, not fail one test.
        pytest.skip("this llama.cpp was built with AMX int8 kernels, which segfault on Q8_0 "
                    "matrices (llama.cpp issue 20824; a Q8_0 file llama.cpp quantised itself "
                    "too): `make llama-cpp` builds it without them")
    llm = llama_cpp_models(decisive_run, dtype)
    trained = load_trained(decisive_run, device="cpu")
    identical = 0
    for text in LLAMA_CPP_PROMPTS:
        ids = trained.tokenizer.encode(text, add_special_tokens=False).ids
        assert len(ids) + N_GREEDY <= trained.model.cfg.seq_len, text
        ours = our_greedy(trained, ids, N_GREEDY)
        llm.reset()
        theirs = list(itertools.islice(
            llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0), N_GREEDY))
        if theirs == ours:
            identical += 1
            continue
        with torch.no_grad():  # our logits at each of llama.cpp's steps, along its path
            logits = trained.model(torch.tensor([ids + theirs]))[0, len(ids) - 1: -1]
        below_best = logits.max(-1).values - logits[torch.arange(N_GREEDY), torch.tensor(theirs)]
        assert float(below_best.max()) <= TIE[dtype], (dtype, text, theirs, ours)
    # Ties are the exception: most prompts continue identically.
    assert identical >= len(LLAMA_CPP_PROMPTS) - 1, (dtype, identical)


@needs_llama_cpp
def test_llama_cpp_f32_logits_match_ours(decisive_run, llama_cpp_models):
    """Every position's logits, for each prompt and for 64 random tokens (the whole
    context, so late positions' RoPE angles are checked too), within 1e-3 of ours:
    the f32 export with a float32 KV cache, the precision fmforge computes in."""
    llm = llama_cpp_models(decisive_run, "f32", kv="f32")
    trained = load_trained(decisive_run, device="cpu")
    cfg = trained.model.cfg
    random_ids = torch.randint(0, cfg.vocab_size, (cfg.seq_len,),
                               generator=torch.Generator().manual_seed(1)).tolist()
    sequences = [trained.tokenizer.encode(t, add_special_tokens=False).ids
                 for t in LLAMA_CPP_PROMPTS] + [random_ids]
    for ids in sequences:
        llm.reset()
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)])
        with torch.no_grad():
            ours = trained.model(torch.tensor([ids]))[0].numpy()
        assert theirs.shape == ours.shape
        diff = float(np.abs(theirs - ours).max())
        assert diff < 1e-3, (diff, ids)


@needs_llama_cpp
def test_llama_cpp_reads_the_general_metadata_and_chat_template(tiny_runs, tmp_path):
    """llama.cpp's model metadata (llama_model_meta_*) gives back every general.*
    value and the chat template, and llama-cpp-python's chat completion, which
    formats with that template, renders a conversation as transformers does with
    the run's tokenizer."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    run = labelled(tiny_runs["gqa-tied"], tmp_path, **LABELS)
    llm = llama_cpp.Llama(model_path=str(export(run, tmp_path / "model.gguf", "q8_0")),
                          n_ctx=64, n_threads=1, verbose=False)
    try:
        meta = llm.metadata
        assert meta["general.name"] == LABELS["name"]
        assert meta["general.license"] == LABELS["license"]
        assert meta["general.source.url"] == LABELS["source_url"]
        assert meta["general.author"] == meta["general.quantized_by"] == LABELS["author"]
        assert meta["general.file_type"] == str(SPEC_FILE_TYPE["q8_0"])
        assert "Llama" in meta["general.description"]
        template = llama_cpp.llama_model_chat_template(llm.model, None).decode()
        assert template == meta["tokenizer.chat_template"]
        assert llm.chat_format == "chat_template.default"  # the file's own template, not a guess
        eos = llm._model.token_get_text(llm.token_eos())
        messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
        theirs = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")(messages=messages)
        ours = AutoTokenizer.from_pretrained(str(run.tokenizer)).apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        assert theirs.prompt == ours
    finally:
        llm.close()


# --- the tokenizer's metadata and the file itself, against the GGUF spec and llama.cpp ---

# The GGUF spec's token types (llama.cpp's llama_token_type): 1 NORMAL, 3 CONTROL,
# 4 USER_DEFINED, 5 UNUSED.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def tokenizer_json(run) -> dict:
    return json.loads((run.tokenizer / "tokenizer.json").read_text())


def test_special_token_ids_are_transformers_and_no_bos_is_added(tiny_runs, tmp_path):
    """BOS, EOS and PAD ids as transformers' tokenizer of the run gives them, and
    llama.cpp (vocab only) does not prepend a BOS fmforge never trained with."""
    import importlib.util

    from transformers import AutoTokenizer

    run = tiny_runs["gqa-tied"]
    path = export(run, tmp_path / "model.gguf", "f32")
    reader = gguf.GGUFReader(str(path))
    hf = AutoTokenizer.from_pretrained(str(run.tokenizer))
    assert hf.bos_token_id is not None and hf.pad_token_id is not None
    assert field(reader, "tokenizer.ggml.bos_token_id") == hf.bos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == hf.eos_token_id
    assert field(reader, "tokenizer.ggml.padding_token_id") == hf.pad_token_id
    assert field(reader, "tokenizer.ggml.add_eos_token") is False
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        ours = hf("def alpha", add_special_tokens=False)["input_ids"]
        assert llm.tokenize(b"def alpha", add_bos=True, special=False) == ours
        assert llm.token_bos() == hf.bos_token_id
        llm.close()


def edited_tokenizer(run, tmp_path: Path, config=None, tokenizer=None, remove=()) -> RunDir:
    """A copy of ``run`` whose tokenizer files are edited: ``config(dict)`` and
    ``tokenizer(dict)`` change tokenizer_config.json and tokenizer.json in place."""
    copy = labelled(run, tmp_path)
    for name, edit in (("tokenizer_config.json", config), ("tokenizer.json", tokenizer)):
        if edit is not None:
            path = copy.tokenizer / name
            data = json.loads(path.read_text())
            edit(data)
            path.write_text(json.dumps(data))
    for name in remove:
        (copy.tokenizer / name).unlink()
    return copy


def test_a_tokenizer_that_adds_bos_gets_it_from_llama_cpp(tiny_runs, tmp_path):
    """An imported Llama tokenizer that prepends BOS (``add_bos_token: true``):
    llama.cpp must prepend it too, or prompts would differ from training."""
    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path, config=lambda c: c.update(add_bos_token=True))
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    assert field(reader, "tokenizer.ggml.add_bos_token") is True


def test_without_a_bos_token_the_eos_stands_for_it(tiny_runs, tmp_path):
    """GPT-2's convention, as llama.cpp's converter writes a tokenizer without BOS."""
    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path, config=lambda c: c.update(bos_token=None))
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    eos = load_trained(run, device="cpu").eos_id
    assert field(reader, "tokenizer.ggml.bos_token_id") == eos
    assert field(reader, "tokenizer.ggml.eos_token_id") == eos
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_without_tokenizer_config_the_file_has_no_template_and_adds_no_bos(tiny_runs, tmp_path):
    """The EOS then comes from the config's tokenizer.eos_token, as for training."""
    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path, remove=("tokenizer_config.json",))
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    assert reader.get_field("tokenizer.chat_template") is None
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    tok = tokenizer_json(run)
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    assert field(reader, "tokenizer.ggml.eos_token_id") == eos
    assert field(reader, "tokenizer.ggml.bos_token_id") == eos


def test_a_tokenizer_config_silent_on_bos_adds_none(tiny_runs, tmp_path):
    """No add_bos_token key: transformers' tokenizer then prepends nothing, and
    neither must llama.cpp."""
    from transformers import AutoTokenizer

    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path, config=lambda c: c.pop("add_bos_token"))
    hf = AutoTokenizer.from_pretrained(str(run.tokenizer))
    assert hf("def")["input_ids"][0] != hf.bos_token_id
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32")))
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_chat_templates_as_transformers_saves_them(tiny_runs, tmp_path):
    """transformers saves a template in tokenizer_config.json (a string, or a list of
    named ones) or, since 4.43 / 5, in chat_template.jinja beside it; llama.cpp
    reads the default as tokenizer.chat_template and the others as
    tokenizer.chat_template.NAME (as its converter writes them)."""
    named = [{"name": "default", "template": "{{ messages[0]['content'] }}"},
             {"name": "tool_use", "template": "{{ tools }}"}]
    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path / "a", config=lambda c: c.update(chat_template=named))
    reader = gguf.GGUFReader(str(export(run, tmp_path / "a.gguf", "f32")))
    assert field(reader, "tokenizer.chat_template") == "{{ messages[0]['content'] }}"
    assert field(reader, "tokenizer.chat_template.tool_use") == "{{ tools }}"

    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path / "b", config=lambda c: c.pop("chat_template"))
    (run.tokenizer / "chat_template.jinja").write_text("{{ bos_token }}{{ messages }}")
    reader = gguf.GGUFReader(str(export(run, tmp_path / "b.gguf", "f32")))
    assert field(reader, "tokenizer.chat_template") == "{{ bos_token }}{{ messages }}"

    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path / "c", config=lambda c: c.pop("chat_template"))
    reader = gguf.GGUFReader(str(export(run, tmp_path / "c.gguf", "f32")))
    assert reader.get_field("tokenizer.chat_template") is None


def test_token_types_and_padding_rows_follow_the_spec(tiny_runs):
    """Special tokens CONTROL, other added tokens USER_DEFINED, the BPE vocabulary
    NORMAL, and rows beyond the tokenizer (a model padded to a rounder vocabulary)
    UNUSED with a distinct placeholder each (llama.cpp needs one token per row)."""
    from fmforge.export.gguf import tokenizer_metadata

    tok = tokenizer_json(tiny_runs["gqa-tied"])
    n = max(tok["model"]["vocab"].values()) + 1
    tok["added_tokens"].append({"id": n, "content": "<tool>", "special": False})
    meta = tokenizer_metadata(tok, n + 4)
    assert len(meta["tokens"]) == len(meta["types"]) == n + 4
    assert len(set(meta["tokens"])) == n + 4
    assert meta["tokens"][n] == "<tool>" and meta["types"][n] == USER_DEFINED
    assert meta["types"][n + 1:] == [UNUSED] * 3
    specials = {t["id"] for t in tok["added_tokens"] if t.get("special")}
    for token, i in tok["model"]["vocab"].items():
        assert meta["tokens"][i] == token
        assert meta["types"][i] == (CONTROL if i in specials else NORMAL), (i, token)
    # merges as "a b" strings, whether tokenizers wrote them as pairs or strings
    pairs = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    assert meta["merges"] == pairs
    as_strings = {**tok, "model": {**tok["model"], "merges": pairs}}
    assert tokenizer_metadata(as_strings, n + 1)["merges"] == pairs


def test_sparse_tokenizer_json_is_read_with_tokenizers_defaults():
    """tokenizer.json keys tokenizers may leave out: no added_tokens, no merges (a
    BPE of single characters), even an empty vocabulary; no model at all is refused."""
    from fmforge.export.gguf import GGUFExportError, tokenizer_metadata

    meta = tokenizer_metadata({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}, 3)
    assert meta["tokens"][:2] == ["a", "b"] and meta["types"] == [NORMAL, NORMAL, UNUSED]
    assert meta["merges"] == []
    assert tokenizer_metadata({"model": {"type": "BPE", "vocab": {}}}, 2)["types"] == [UNUSED] * 2
    with pytest.raises(GGUFExportError, match="None"):
        tokenizer_metadata({}, 2)


def test_a_tokenizer_wider_than_the_model_is_refused(tiny_runs):
    from fmforge.export.gguf import tokenizer_metadata

    tok = tokenizer_json(tiny_runs["gqa-tied"])
    top = max(t["id"] for t in tok["added_tokens"]) if tok["added_tokens"] else 0
    top = max(top, max(tok["model"]["vocab"].values()))
    tokenizer_metadata(tok, top + 1)  # exactly one row per id: fine
    with pytest.raises(ValueError, match=f"ids up to {top}"):
        tokenizer_metadata(tok, top)


def test_tokenizers_llama_cpp_would_split_otherwise_are_refused(tiny_runs, gpt2_split_run, tmp_path):
    """tokenizers' ByteLevel applies GPT-2's regex unless told otherwise
    (use_regex defaults to true): a ByteLevel that omits the key is GPT-2's split,
    and GPT-4's split followed by a ByteLevel that omits it is split twice, which
    llama.cpp's llama-bpe would not reproduce: refused, as is any other
    pre-tokenizer and any model but BPE."""
    from tokenizers import pre_tokenizers

    from fmforge.export.gguf import llama_cpp_pre_tokenizer

    assert pre_tokenizers.ByteLevel(add_prefix_space=False).use_regex is True
    gpt2 = tokenizer_json(gpt2_split_run)
    del gpt2["pre_tokenizer"]["use_regex"]
    assert llama_cpp_pre_tokenizer(gpt2) == "gpt-2"
    gpt4 = tokenizer_json(tiny_runs["gqa-tied"])
    assert llama_cpp_pre_tokenizer(gpt4) == "llama-bpe"
    del gpt4["pre_tokenizer"]["pretokenizers"][1]["use_regex"]
    assert llama_cpp_pre_tokenizer(gpt4) is None
    assert llama_cpp_pre_tokenizer({"pre_tokenizer": None}) is None
    assert llama_cpp_pre_tokenizer({}) is None
    assert llama_cpp_pre_tokenizer({"pre_tokenizer": {"type": "Sequence"}}) is None
    no_pattern = tokenizer_json(tiny_runs["gqa-tied"])
    del no_pattern["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    assert llama_cpp_pre_tokenizer(no_pattern) is None
    three = tokenizer_json(tiny_runs["gqa-tied"])
    three["pre_tokenizer"]["pretokenizers"].append({"type": "Digits", "individual_digits": True})
    assert llama_cpp_pre_tokenizer(three) is None

    run = edited_tokenizer(tiny_runs["gqa-tied"], tmp_path / "w",
                           tokenizer=lambda t: t.update(pre_tokenizer={"type": "Whitespace"}))
    result = runner.invoke(app, ["export", "gguf", str(run.root), str(tmp_path / "w.gguf")])
    assert result.exit_code == 2 and "Whitespace" in result.output and "tokenizer.json" in result.output
    assert not (tmp_path / "w.gguf").exists()

    from fmforge.export.gguf import GGUFExportError, tokenizer_metadata

    with pytest.raises(GGUFExportError, match="Unigram"):
        tokenizer_metadata({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}, 10)


def test_the_file_is_readable_by_others_and_nothing_is_left_after_a_failure(tiny_runs, tmp_path,
                                                                          monkeypatch):
    """Written aside and renamed: into a directory created for it, with the mode
    any file written under the usual umask has (the temporary file starts 0600);
    a write that fails leaves neither the file nor its temporary copy."""
    import os

    run = tiny_runs["gqa-tied"]
    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_text("x")
        path = export(run, tmp_path / "new" / "dir" / "model.gguf", "f32")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]

    seen = []
    original = gguf.GGUFWriter.write_tensors_to_file

    def watched(self, *a, **k):  # what the directory holds while the tensors are written
        seen.extend(p.name for p in (tmp_path / "watched").iterdir())
        return original(self, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", watched)
    export(run, tmp_path / "watched" / "model.gguf", "f32")
    # beside the target (the rename stays on one filesystem), hidden and not *.gguf, so a
    # folder of models (llama-server --models-dir, LM Studio) never lists a partial file
    assert len(seen) == 1 and seen[0].startswith(".model.gguf.") and seen[0].endswith(".tmp"), seen

    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    result = runner.invoke(app, ["export", "gguf", str(run.root), str(tmp_path / "out" / "m.gguf")])
    assert result.exit_code != 0
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failure_after_the_rename_reports_its_own_error(tiny_runs, tmp_path, monkeypatch):
    """If syncing the directory fails once the file is in place, the user sees that
    error (an I/O error), not a confusing one about the temporary file being gone."""
    import fmforge.export.gguf as gguf_export

    def failing_sync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(gguf_export, "fsync_dir", failing_sync)
    with pytest.raises(OSError) as err:
        gguf_export.export_gguf(tiny_runs["gqa-tied"], tmp_path / "m.gguf", "f32")
    assert err.value.errno == 5


def test_an_imported_model_with_odd_widths_exports_and_says_where_it_came_from(tiny_runs, tmp_path):
    """A Llama imported from transformers with width 48 (not a multiple of q8_0's
    blocks of 32): those matrices fall back to f16, as llama.cpp's converter does,
    the others are Q8_0; the file gives transformers' logits under llama.cpp's
    RoPE, and the description says it was imported, not trained here."""
    from fmforge.export.hf import import_hf

    transformers = pytest.importorskip("transformers")
    source = tiny_runs["gqa-tied"]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
        eos_token_id=load_trained(source, device="cpu").eos_id, bos_token_id=None)
    hf_dir = tmp_path / "hf-llama"
    transformers.LlamaForCausalLM(config).save_pretrained(str(hf_dir), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source.tokenizer / name, hf_dir / name)
    run = import_hf(hf_dir, tmp_path / "imported")
    reader = gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "q8_0")))
    q = gguf.GGMLQuantizationType
    types = {t.name: t.tensor_type for t in reader.tensors}
    for t in reader.tensors:
        rows = tuple(reversed(t.shape.tolist()))
        want = q.F32 if len(rows) == 1 else q.Q8_0 if rows[-1] % 32 == 0 else q.F16
        assert types[t.name] == want, (t.name, rows, types[t.name])
    assert types["blk.0.ffn_down.weight"] == q.Q8_0 and types["blk.0.attn_q.weight"] == q.F16
    assert "Imported into fmforge from a Hugging Face Llama checkpoint" in field(reader, "general.description")
    assert "Trained" not in field(reader, "general.description")

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    hp = {"n_head": field(reader, "llama.attention.head_count"),
          "n_kv": field(reader, "llama.attention.head_count_kv"),
          "n_layer": field(reader, "llama.block_count"),
          "eps": field(reader, "llama.attention.layer_norm_rms_epsilon"),
          "theta": field(reader, "llama.rope.freq_base")}
    tokens = list(range(3, 40))
    with torch.no_grad():
        ref = hf(torch.tensor([tokens])).logits[0]
    got = llama_cpp_logits(read_tensors(reader), hp, tokens)
    # f16 and q8_0 weights: close, not equal (logits of a random model span about ±1)
    assert (got - ref).abs().max().item() < 0.05


def test_gguf_description_of_a_run_without_data_or_token_counts(tiny_runs, tmp_path):
    """A config with no data section (a fine-tuning config on JSONL examples) names
    no sources; a checkpoint from before fmforge counted tokens gives no count."""
    run = labelled(tiny_runs["gqa-tied"], tmp_path)
    raw = yaml.safe_load(run.config.read_text())
    del raw["data"]
    raw["finetune"] = {"base": "somewhere", "data": ["chats.jsonl"]}
    run.config.write_text(yaml.safe_dump(raw))
    state_path = next(run.checkpoints.glob("step-*/trainer_state.json"))
    state = json.loads(state_path.read_text())
    del state["tokens"]
    state_path.write_text(json.dumps(state))
    text = field(gguf.GGUFReader(str(export(run, tmp_path / "model.gguf", "f32"))), "general.description")
    assert text.endswith(f"Trained from scratch with fmforge for {state['step']:,} steps."), text
