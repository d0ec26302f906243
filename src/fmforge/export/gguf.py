"""GGUF export in the layout llama.cpp reads for Llama models.

Tensors are named as llama.cpp's ``llama`` architecture names them (``token_embd``,
``blk.N.attn_q`` ..., ``output_norm``, ``output``; no ``output`` when the head is
tied: llama.cpp then reuses ``token_embd``). The q and k projections are
permuted the way llama.cpp's ``convert_hf_to_gguf.py`` permutes a Hugging Face
Llama's: llama.cpp rotates adjacent pairs (2i, 2i+1) of a head, Hugging Face
(and fmforge) rotate i with i + head_dim/2, so the rows of each head are
interleaved (the rotation commutes with the row order, since q·k sums over
both). The tokenizer is stored as byte-level BPE (``tokenizer.ggml.model = "gpt2"``)
with llama.cpp's pre-tokenizer of the same split: ``llama-bpe`` for the GPT-4
split (``tokenizer.split: gpt4``, the default; Llama 3's regex), ``gpt-2`` for
GPT-2's.

``dtype``: f32; f16 (matrices in f16, norms in f32, like llama.cpp's converter);
q8_0 (matrices quantised in blocks of 32, norms in f32; a matrix whose rows are
not a multiple of 32 falls back to f16, as llama.cpp's converter does).

Metadata about the model (``general.*``, the GGUF spec's names): its name,
a one-line description, license, source URL and author from the config's
``export:`` section (``ExportConfig``; a key left out is not written), who
quantized it, the file type, and the tokenizer's chat template.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fmforge.config import ModelConfig, RunConfig, config_from_dict
from fmforge.model.counting import count_parameters
from fmforge.train.checkpoint import list_checkpoints, load_trainer_state
from fmforge.errors import MissingDependencyError, UserError
from fmforge.tokenizer.load import special_token_ids
from fmforge.inference.loading import TrainedModel, load_trained
from fmforge.rundir import RunDir, fsync_dir

DTYPES = ("f32", "f16", "q8_0")
# llama.cpp's name for GPT-2's split pattern, what tokenizers' ByteLevel(use_regex=True)
# applies ("gpt-2" in llama-vocab.cpp and convert_hf_to_gguf.py; llama.cpp refuses a
# file whose pre-tokenizer name it does not know, and "gpt2" is not one).
GPT2_PRE = "gpt-2"


class GGUFExportError(UserError, ValueError):
    """A run GGUF export cannot write as asked: an unknown --dtype, or a tokenizer
    llama.cpp could not read the same way."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("GGUF export needs the gguf package: `pip install 'fmforge[gguf]'` "
                          "(or `pip install gguf`)") from None
    return gguf


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection from the rotate-half layout (HF, fmforge) to the
    interleaved one llama.cpp's Llama expects: within each head, row j of the first
    half goes to 2j, row j of the second half to 2j+1 (``LlamaModel.permute`` in
    llama.cpp's convert_hf_to_gguf.py)."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """fmforge weights -> llama.cpp's names and layout, as float32 arrays in
    PyTorch's (rows, columns) order (the gguf writer reverses it to ggml's)."""
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"token_embd.weight": state["embed.weight"], "output_norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        ours, b = f"blocks.{i}.", f"blk.{i}."
        q, k, v = state[ours + "attn.qkv_proj.weight"].split([q_rows, kv_rows, kv_rows])
        gate, up = state[ours + "mlp.gate_up_proj.weight"].split([cfg.ffn_dim, cfg.ffn_dim])
        out.update({
            b + "attn_norm.weight": state[ours + "attn_norm.weight"],
            b + "attn_q.weight": permute_rope_rows(q, cfg.n_heads),
            b + "attn_k.weight": permute_rope_rows(k, cfg.kv_heads),
            b + "attn_v.weight": v,
            b + "attn_output.weight": state[ours + "attn.o_proj.weight"],
            b + "ffn_norm.weight": state[ours + "mlp_norm.weight"],
            b + "ffn_gate.weight": gate,
            b + "ffn_up.weight": up,
            b + "ffn_down.weight": state[ours + "mlp.down_proj.weight"],
        })
    return {name: t.detach().float().cpu().contiguous().numpy().copy() for name, t in out.items()}


def llama_cpp_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's name for the tokenizer's split: ``gpt-2`` for GPT-2's
    byte-level regex, ``llama-bpe`` for GPT-4's (cl100k) split, which Llama 3
    uses too; None for anything else."""
    from fmforge.tokenizer.train import GPT4_SPLIT

    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PRE
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Split"
                and parts[0].get("pattern", {}).get("Regex") == GPT4_SPLIT
                and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
            return "llama-bpe"
    return None


def tokenizer_metadata(tokenizer_json: dict[str, Any], n_vocab: int) -> dict[str, Any]:
    """tokens, token types and merges of a byte-level BPE ``tokenizer.json``, the
    token list padded to the model's ``n_vocab`` rows (llama.cpp requires one
    entry per embedding row; the padding is typed UNUSED, as in llama.cpp's
    converter)."""
    gguf = _gguf()
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise GGUFExportError(f"GGUF export supports byte-level BPE tokenizers; this one is "
                              f"{model.get('type')!r}")
    vocab: dict[str, int] = dict(model["vocab"])
    special, added = set(), {}
    for t in tokenizer_json.get("added_tokens", []):
        added[t["id"]] = t["content"]
        if t.get("special"):
            special.add(t["id"])
    by_id = {i: tok for tok, i in vocab.items()} | added
    if by_id and max(by_id) >= n_vocab:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's "
                         f"{n_vocab} embedding rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else
                         gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def model_description(cfg: RunConfig, model_cfg: ModelConfig, state: dict[str, Any]) -> str:
    """One paragraph on what the model is and what it was trained on, for
    ``general.description``: the architecture and its size, the context and the
    vocabulary, and the training (steps, tokens, the data's sources by name),
    naming no path of this machine."""
    heads = f"{model_cfg.n_heads} attention heads"
    if model_cfg.kv_heads != model_cfg.n_heads:
        heads += f" sharing {model_cfg.kv_heads} key-value heads"
    text = (f"A Llama-architecture language model: {count_parameters(model_cfg).total:,} parameters, "
            f"{model_cfg.n_layers} layers of width {model_cfg.d_model}, {heads}, "
            f"{model_cfg.seq_len:,}-token context, {int(model_cfg.vocab_size):,}-token byte-level BPE "
            "vocabulary.")
    if "imported_from" in state:
        return text + " Imported into fmforge from a Hugging Face Llama checkpoint."
    text += f" Trained from scratch with fmforge for {int(state['step']):,} steps"
    if "tokens" in state:
        text += f" ({int(state['tokens']):,} tokens)"
    names = [s.name for s in cfg.data.sources] if cfg.data is not None else []
    if names:  # up to six by name
        text += " on " + ", ".join(names[:6])
        if len(names) > 6:
            text += f" and {len(names) - 6} more"
    return text + "."


def chat_template(tokenizer_dir: Path) -> str | list[dict[str, str]] | None:
    """The tokenizer's chat template (``tokenizer_config.json``'s ``chat_template``,
    a string or transformers' list of named ones), else ``chat_template.jinja``
    beside it (where transformers 5 saves it); None without one."""
    path = tokenizer_dir / "tokenizer_config.json"
    if path.is_file():
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if template:
            return template
    jinja = tokenizer_dir / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def _add_general_metadata(writer, cfg: RunConfig, model_cfg: ModelConfig, state: dict[str, Any],
                          file_type: int) -> None:
    labels = cfg.export
    writer.add_name(labels.name or cfg.name)
    writer.add_description(labels.description or model_description(cfg, model_cfg, state))
    if labels.author is not None:
        writer.add_author(labels.author)
    if labels.license is not None:
        writer.add_license(labels.license)
    if labels.source_url is not None:
        writer.add_source_url(labels.source_url)
    # Who made this file's quantization: the author when named, else the program.
    writer.add_quantized_by(labels.author or "fmforge")
    writer.add_file_type(file_type)


def _add_tensor(writer, gguf, name: str, data: np.ndarray, dtype: str) -> None:
    q = gguf.GGMLQuantizationType
    if data.ndim == 1 or dtype == "f32":  # norms stay f32 (llama.cpp's converter does too)
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        writer.add_tensor(name, gguf.quants.quantize(data, q.Q8_0), raw_dtype=q.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def export_gguf(run: RunDir, out_path: str | Path, dtype: str = "f16",
                trained: TrainedModel | None = None) -> Path:
    """Write the run's latest checkpoint as one GGUF file (written aside, then renamed)."""
    if dtype not in DTYPES:
        raise GGUFExportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    gguf = _gguf()
    out_path = Path(out_path)
    trained = trained or load_trained(run, device="cpu")
    run_cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    state = load_trainer_state(dict(list_checkpoints(run.checkpoints))[trained.step])
    cfg = trained.model.cfg
    tensors = gguf_tensors(trained.model.state_dict(), cfg)
    tok_json = json.loads((run.tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    pre_name = llama_cpp_pre_tokenizer(tok_json)
    if pre_name is None:
        pre = tok_json.get("pre_tokenizer") or {}
        raise GGUFExportError(f"{run.tokenizer / 'tokenizer.json'}: GGUF export supports fmforge's byte-level "
                              f"pre-tokenizers (the GPT-2 and GPT-4 splits); this one is {pre.get('type')!r}")
    meta = tokenizer_metadata(tok_json, int(cfg.vocab_size))
    ids = special_token_ids(run.tokenizer, trained.tokenizer)
    eos = trained.eos_id if trained.eos_id is not None else ids["eos"]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        _add_general_metadata(writer, run_cfg, cfg, state, int(file_type))
        # As llama.cpp's converter and quantizer write it.
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(cfg.seq_len)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.ffn_dim)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.kv_heads)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_vocab_size(int(cfg.vocab_size))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_name)
        writer.add_token_list(meta["tokens"])
        writer.add_token_types(meta["types"])
        writer.add_token_merges(meta["merges"])
        # No BOS in fmforge's tokenizer: llama.cpp gets the EOS id (GPT-2's
        # convention) and is told not to add it; documents are separated by EOS.
        bos = ids["bos"] if ids["bos"] is not None else eos
        if bos is not None:
            writer.add_bos_token_id(bos)
        if eos is not None:
            writer.add_eos_token_id(eos)
        if ids["pad"] is not None:
            writer.add_pad_token_id(ids["pad"])
        writer.add_add_bos_token(ids["bos"] is not None and _adds_bos(run))
        writer.add_add_eos_token(False)
        template = chat_template(run.tokenizer)
        if template:
            writer.add_chat_template(template)
        for name, data in tensors.items():
            _add_tensor(writer, gguf, name, data, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def _adds_bos(run: RunDir) -> bool:
    """Whether the run's tokenizer prepends BOS to a prompt (an imported Llama's
    ``add_bos_token``); fmforge's own tokenizers do not."""
    path = run.tokenizer / "tokenizer_config.json"
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text(encoding="utf-8")).get("add_bos_token", False))
