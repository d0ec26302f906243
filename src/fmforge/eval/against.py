"""Any model on the run's held-out bytes: ``fmforge eval RUN --against DIR ...``.

A candidate is a local Hugging Face causal LM directory, a PEFT adapter
directory on its base, or another fmforge run. Each is scored on exactly the
run's held-out documents, the way it was trained, with the same arithmetic as
every other row of the table:

- per source, the documents are encoded with the candidate's own tokenizer,
  without special tokens, special-token *text* (``<s>``, ``</s>``, ``<unk>``,
  ``<|endoftext|>``, ``<|im_start|>`` ... written in a document) as plain text,
  and joined by ``tokenizer.stream.join_documents``: ``[eos] doc [eos] doc ...``
  for a tokenizer without a beginning-of-sequence token (fmforge's own, GPT-2
  style), ``[bos] doc [eos] [bos] doc [eos] ...`` for one that adds it
  (``add_special_tokens=True`` puts it first, or ``tokenizer_config.json`` says
  ``add_bos_token``: Llama, Mistral, Gemma); with BOS, every window also opens
  with it, and it is never a scored target (``model.scoring``);
- the stream is cut into windows of the candidate's context (``stride`` for
  sliding windows) and the nats of every predicted token are summed, in float32
  unless ``dtype="bfloat16"`` (every candidate, and the run itself, then in bf16);
- overall is the sum over the per-source streams, as for the run's own figure
  (``eval/heldout.py``).

Bits per byte = nats / ln 2 / the documents' UTF-8 bytes: the same denominator
for every candidate, so models with different tokenizers compare, with each
other and with gzip and xz. ``eval.json`` records the convention, the precision
and the definition of overall with every candidate.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fmforge.errors import UserError

from fmforge.eval.heldout import OVERALL_IS, heldout_texts
from fmforge.model.scoring import score_tokens
from fmforge.progress import log
from fmforge.rundir import RunDir
from fmforge.tokenizer.stream import Convention, join_documents

# The longest window scored: a model's context can be 128k tokens, which on a
# CPU costs far more than it tells about held-out text.
MAX_WINDOW = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CandidateError(UserError, ValueError):
    """A candidate that cannot be scored as given."""


@dataclass
class Candidate:
    path: Path
    name: str
    kind: str  # "hf", "peft" or "fmforge"
    model: torch.nn.Module  # (B, T) ids -> (B, T, V) logits
    encode: Callable[[list[str]], list[list[int]]]  # documents -> ids, special-token text as text
    decode: Callable[[list[int]], str]
    convention: Convention  # how documents are joined: eos, and bos where it was trained with one
    context: int
    params: int
    unk_id: int | None = None

    @property
    def eos_id(self) -> int:
        return self.convention.eos_id


class _Logits(torch.nn.Module):
    """A Hugging Face causal LM as ``ids -> logits``, the interface the scorer uses."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits


def load_candidate(path: str | Path, device: torch.device, dtype: str = "float32") -> Candidate:
    """The model at ``path`` ready to score: its weights in ``dtype`` for a Hugging
    Face model (float32 or bfloat16; an fmforge run's stay float32, bf16 then
    comes from autocast in ``score_candidate``)."""
    if dtype not in DTYPES:
        raise CandidateError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    path = Path(path)
    if not path.is_dir():
        raise CandidateError(f"--against {path}: no such directory")
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        return _fmforge_candidate(path, device)
    from fmforge.inference.hf_models import is_adapter_dir

    if is_adapter_dir(path):
        return _hf_candidate(path, device, kind="peft", dtype=DTYPES[dtype])
    if (path / "config.json").is_file():
        return _hf_candidate(path, device, kind="hf", dtype=DTYPES[dtype])
    raise CandidateError(f"--against {path}: not a model: expected a Hugging Face model directory "
                         "(config.json), a PEFT adapter directory (adapter_config.json) or an "
                         "fmforge run (config.yaml and checkpoints/)")


def _fmforge_candidate(path: Path, device: torch.device) -> Candidate:
    from fmforge.inference.loading import load_trained
    from fmforge.model.counting import count_parameters

    trained = load_trained(RunDir(path), device=str(device.type))
    tok = trained.tokenizer
    tok.encode_special_tokens = True  # as the tokenize stage encodes its training text
    return Candidate(
        path=path, name=path.resolve().name, kind="fmforge", model=trained.model,
        encode=lambda docs: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)],
        decode=lambda ids: tok.decode(ids, skip_special_tokens=False),
        convention=Convention(eos_id=trained.eos_id, eos_token=tok.id_to_token(trained.eos_id)),
        context=trained.model.cfg.seq_len,
        params=count_parameters(trained.model.cfg).total)


def _hf_candidate(path: Path, device: torch.device, kind: str, dtype: torch.dtype) -> Candidate:
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise CandidateError(f"scoring {path} needs transformers: pip install 'fmforge[hf]' ({exc})") from exc
    from fmforge.inference.hf_models import adapter_base, load_model, load_tokenizer

    base = adapter_base(path) if kind == "peft" else path
    try:
        config = AutoConfig.from_pretrained(str(base), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CandidateError(f"--against {path}: {base}/config.json is not a model configuration "
                             f"transformers reads ({exc})") from exc
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise CandidateError(f"--against {path}: {arch} is not a causal language model (transformers "
                             "has no AutoModelForCausalLM for it): bits per byte needs a model that "
                             "predicts the next token")
    model = load_model(path, device, dtype=dtype)
    if kind == "peft":
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="fmforge-tokenizer-") as scratch:
        tok_dir = _tokenizer_dir(path, base, Path(scratch))
        try:
            tok = load_tokenizer(tok_dir)
        except UserError as exc:
            if tok_dir != Path(scratch):
                raise
            raise CandidateError(
                f"--against {path}: its {' and '.join(str(path / n) for n in _tokenizer_half(path))} "
                f"over the rest of its base {base}'s tokenizer: transformers cannot load them "
                f"({exc.__cause__ or exc}); repair the adapter's tokenizer files, or remove them to "
                "score it with its base's tokenizer") from exc
        bos = _bos_id(tok, tok_dir)
    # Whole documents are encoded, then cut into windows: not a length the model sees.
    tok.model_max_length = 1 << 62
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise CandidateError(f"--against {path}: its tokenizer has no end-of-text token to join "
                             "documents with (eos_token)")
    context = _context_of(config)
    convention = Convention(eos_id=int(eos), eos_token=tok.convert_ids_to_tokens(int(eos)),
                            bos_id=bos, bos_token=tok.convert_ids_to_tokens(bos) if bos is not None else None)
    return Candidate(
        path=path, name=path.resolve().name, kind=kind, model=_Logits(model).eval(),
        # split_special_tokens: "<s>" written in a document is text, not the token
        encode=lambda docs: tok(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"],
        decode=lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
        convention=convention, context=min(context, MAX_WINDOW),
        params=sum(p.numel() for p in model.parameters()), unk_id=tok.unk_token_id)


# A tokenizer's files, in two halves: its vocabulary (which ids a text gets) and its
# settings (which tokens are special, whether BOS is added).
TOKENIZER_VOCABULARY = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                        "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")
TOKENIZER_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json")


def _tokenizer_half(adapter: Path) -> list[str]:
    return [n for n in TOKENIZER_VOCABULARY + TOKENIZER_SETTINGS if (adapter / n).is_file()]


def _tokenizer_dir(path: Path, base: Path, scratch: Path) -> Path:
    """Where the tokenizer of the candidate at ``path`` (on ``base``; the same for a
    model directory) is read from. An adapter that ships a whole tokenizer (a
    vocabulary and its settings) is read from its own directory, one that ships none
    from its base's. One that ships half of one (tokenizer.json without
    tokenizer_config.json: a vocabulary that names no special token; or
    tokenizer_config.json alone: settings transformers cannot load without a
    vocabulary) gets that half over its base's other half, assembled in ``scratch``
    with links: the fine-tune's files win, the base's fill in the rest."""
    if path == base:
        return path
    for name in TOKENIZER_VOCABULARY + TOKENIZER_SETTINGS:
        # a link to a file that is gone: is_file() says no file, and the base's
        # tokenizer (another one) would be used in silence
        if (path / name).is_symlink() and not (path / name).exists():
            raise CandidateError(f"--against {path}: {path / name} links to {os.readlink(path / name)}, which "
                                 "does not exist: restore it, or remove the link (what the adapter's other "
                                 "tokenizer files leave out then comes from its base)")
    vocabulary = [n for n in TOKENIZER_VOCABULARY if (path / n).is_file()]
    settings = [n for n in TOKENIZER_SETTINGS if (path / n).is_file()]
    if not vocabulary and not settings:
        return base
    if vocabulary and settings:
        return path
    # tokenizer_config.json replaces both of the base's settings files (a legacy
    # special_tokens_map.json overrides its tokens in transformers); the map alone, only the
    # base's map: the base's tokenizer_config.json (add_bos_token ...) still holds
    replaced = (TOKENIZER_VOCABULARY if vocabulary else
                TOKENIZER_SETTINGS if "tokenizer_config.json" in settings else settings)
    for f in base.iterdir():
        if f.is_file() and f.name not in replaced:
            (scratch / f.name).symlink_to(f.resolve())
    for name in vocabulary + settings:
        (scratch / name).symlink_to((path / name).resolve())
    return scratch


# Where a transformers config keeps its context, by family: Llama and most
# (``max_position_embeddings``, also GPT-2's ``n_positions`` through attribute_map),
# MPT, ChatGLM and Baichuan, Bloom-likes, RWKV, and GPT-2-era ``n_ctx``.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "max_sequence_length", "context_length", "n_ctx")
# A model with no position limit in its config (a state-space model such as Mamba)
# is scored in windows of this many tokens.
UNLIMITED_WINDOW = 2048


def _context_of(config) -> int:
    """The longest input the model was built for, by the first of CONTEXT_KEYS it
    sets; UNLIMITED_WINDOW where it sets none."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return UNLIMITED_WINDOW


def _bos_id(tok, tok_dir: Path) -> int | None:
    """The beginning-of-sequence id the model was trained with, or None: where the
    tokenizer puts it first when asked for special tokens (a post-processor, or
    ``add_bos_token`` honoured by its class), or where ``tokenizer_config.json``
    says ``add_bos_token: true`` (transformers ignores that key for some tokenizer
    classes; the model was trained with it all the same). A BOS that is also the
    end-of-text token is no separate convention: the separator opens every
    document already."""
    bos = tok.bos_token_id
    if bos is None or bos == tok.eos_token_id:
        return None
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    adds = bool(with_special) and with_special[0] == bos
    conf_path = tok_dir / "tokenizer_config.json"
    try:
        conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise CandidateError(f"{conf_path} is not valid JSON ({exc.msg})") from exc
    return int(bos) if adds or conf.get("add_bos_token") is True else None


def heldout_documents(run: RunDir, max_bytes: int | None = None) -> dict[str, list[str]]:
    """The run's held-out documents per source, in shard order. ``max_bytes``
    keeps about that many bytes in all, each source its share of them."""
    docs = heldout_texts(run)
    if not docs:
        raise CandidateError(f"the run {run.root} has no held-out documents: raise data.val_fraction "
                             "and rerun its data stage")
    if max_bytes is not None:
        sizes = {s: sum(len(d.encode("utf-8")) for d in v) for s, v in docs.items()}
        total = sum(sizes.values())
        for source, texts in docs.items():
            budget, kept, used = max_bytes * sizes[source] / total, [], 0
            for text in texts:
                if kept and used + len(text.encode("utf-8")) > budget:
                    break
                kept.append(text)
                used += len(text.encode("utf-8"))
            docs[source] = kept
    return dict(sorted(docs.items()))


def candidate_stream(candidate: Candidate, texts: list[str]) -> np.ndarray:
    """``texts`` as ``candidate`` is scored on them: encoded (special-token text as
    text; refused where the tokenizer cannot give the same bytes back) and joined by
    its convention (``tokenizer.stream``)."""
    encoded = candidate.encode(texts)
    for text, ids in zip(texts, encoded):
        decoded = candidate.decode(ids)
        if (candidate.unk_id is not None and candidate.unk_id in ids) or decoded != text:
            at = next((i for i, (a, b) in enumerate(zip(decoded, text)) if a != b), min(len(decoded), len(text)))
            raise CandidateError(
                f"{candidate.path}: its tokenizer cannot encode the held-out text exactly (it maps some "
                f"bytes to an unknown token or changes them), e.g. near {text[max(0, at - 20): at + 20]!r}; "
                "bits per byte would count the wrong bytes. Score a model whose tokenizer is byte-level "
                "(byte BPE, or byte fallback)")
    return join_documents(encoded, candidate.convention.eos_id, candidate.convention.bos_id)


def score_candidate(candidate: Candidate, documents: dict[str, list[str]], device: torch.device,
                    stride: int | None = None, batch_size: int = 4, dtype: str = "float32") -> dict[str, Any]:
    """Bits per byte of ``candidate`` overall (the sum over the per-source streams)
    and per source, in ``dtype`` (float32: the exact figure every row shares)."""
    window = candidate.context
    if stride is not None and not 0 < stride <= window:
        raise CandidateError(f"--stride {stride} must be between 1 and the window ({window} tokens "
                             f"for {candidate.name})")
    if dtype not in DTYPES:
        raise CandidateError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bfloat16" else None
    per_source, t0 = {}, time.perf_counter()
    for source, texts in documents.items():
        stream = candidate_stream(candidate, texts)
        res = score_tokens(candidate.model, stream, window, batch_size, device, autocast=amp, stride=stride,
                           bos_id=candidate.convention.bos_id)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        per_source[source] = {"bits_per_byte": res.nats / math.log(2) / n_bytes, "nats": res.nats,
                              "tokens": res.tokens, "bytes": n_bytes, "documents": len(texts)}
        log(f"  {candidate.name} on {source}: {per_source[source]['bits_per_byte']:.4f} bits/byte "
            f"({n_bytes:,} bytes, {res.tokens:,} tokens)")
    nats = sum(r["nats"] for r in per_source.values())
    n_bytes = sum(r["bytes"] for r in per_source.values())
    return {"path": str(candidate.path.resolve()), "name": candidate.name, "kind": candidate.kind,
            "params": candidate.params, "context": window, "stride": stride or window,
            "dtype": dtype, "convention": candidate.convention.describe(), "overall_is": OVERALL_IS,
            "bits_per_byte": nats / math.log(2) / n_bytes,
            "bytes": n_bytes, "tokens": sum(r["tokens"] for r in per_source.values()),
            "per_source": per_source, "seconds": round(time.perf_counter() - t0, 2),
            "evaluated_at": time.time()}


def candidate_name(path: Path, taken: dict[str, str | None]) -> str:
    """A name for ``eval.json``'s ``against`` that no other model's path holds:
    the directory's name; a fine-tune's output (``RUN/finetune/model`` or
    ``adapter``) by its run's name; then, while another path holds the name, with
    more of its parents (``elsewhere/model``)."""
    path = path.resolve()
    parts = [path.parent.parent.name] if path.parent.name == "finetune" else [path.name]
    rest = (path.parent.parent.parent if path.parent.name == "finetune" else path.parent).parts
    name = parts[0]
    for parent in reversed(rest[1:]):
        if taken.get(name) in (None, str(path)):
            break
        name = f"{parent}/{name}"
    return name


def evaluate_against(run: RunDir, paths: list[str | Path], device: torch.device, stride: int | None = None,
                     max_bytes: int | None = None, batch_size: int = 4,
                     dtype: str = "float32") -> dict[str, dict[str, Any]]:
    """Score every candidate on the run's held-out documents; recorded in
    ``eval.json`` under ``against`` (one entry per candidate, by name). In
    ``bfloat16`` the run itself is scored too (as a candidate), so that its row
    of the table shares the candidates' arithmetic; its eval stage's own figure
    stays float32."""
    from fmforge.eval.results import record_against

    from fmforge.eval.results import read_eval

    if dtype not in DTYPES:
        raise CandidateError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    documents = heldout_documents(run, max_bytes)
    paths = list(paths)
    if dtype != "float32" and not any(Path(p).resolve() == run.root.resolve() for p in paths):
        paths.append(run.root)
    found = {}
    taken = {name: r.get("path") for name, r in (read_eval(run).get("against") or {}).items()}
    for path in paths:
        candidate = load_candidate(path, device, dtype)
        candidate.name = candidate_name(Path(path), taken)
        taken[candidate.name] = str(Path(path).resolve())
        log(f"scoring {candidate.name} ({candidate.kind}, {candidate.params:,} parameters, window "
            f"{candidate.context}, {candidate.convention.short()}, {dtype}) on "
            f"{sum(len(v) for v in documents.values()):,} held-out documents")
        with torch.no_grad():
            result = score_candidate(candidate, documents, device, stride=stride, batch_size=batch_size,
                                     dtype=dtype)
        if max_bytes is not None:
            result["max_bytes"] = max_bytes
        found[candidate.name] = result
        record_against(run, candidate.name, result)
        del candidate
    return found
