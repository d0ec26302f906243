"""GGUF export: read back with gguf's own reader (names, shapes, values, metadata),
a forward pass written the way llama.cpp computes a Llama (interleaved RoPE)
over the file's tensors reproduces our logits, and, where llama-cpp-python is
installed, llama.cpp itself tokenizes and decodes as we do."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.export.gguf import gguf_tensors
from fmforge.inference.loading import load_trained

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


def test_llama_cpp_tokenizes_and_decodes_like_us(tiny_run, tmp_path, greedy):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp from "
        "source, too slow for CI); `pip install llama-cpp-python` to run this check")
    path = export(tiny_run, tmp_path / "model.gguf", "f32")
    trained = load_trained(tiny_run, device="cpu")
    ids = trained.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, n_batch=64,
                          logits_all=True, verbose=False)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ours_logits = trained.model(torch.tensor([ids]))[0].numpy()
    diff = float(np.abs(np.asarray(llm.scores[: len(ids)]) - ours_logits).max())
    assert diff < 1e-3, diff
    ours = greedy(trained.model, ids, 30)
    llm.reset()
    theirs = list(itertools.islice(llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0), 30))
    assert theirs == ours
