"""Bring your own tokenizer: ``tokenizer.path`` names a ``tokenizer.json`` or a
Hugging Face tokenizer directory, and the tokenizer stage adopts it instead of
training one.

The run's ``tokenizer/`` then holds that tokenizer, with its own
``tokenizer_config.json`` (chat template included) where the directory had one.
Later stages need an end-of-text token (written after every document) and a
padding token: each is found in the tokenizer's own config, else by the
configured name (``tokenizer.eos_token`` / ``pad_token``), else among the usual
names (``</s>``, ``<|end_of_text|>``, ...); one that is missing is added as a
new special token, with a message, and the model gets a row for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from fmforge.config import RunConfig
from fmforge.errors import UserError
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json
from fmforge.tokenizer.load import special_token_names
from fmforge.tokenizer.specials import chat_template


class TokenizerPathError(UserError, ValueError):
    """``tokenizer.path`` does not name a loadable tokenizer."""


COMMON_NAMES = {
    "eos": ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>"],
    "pad": ["<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>"],
}
COPIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def resolve_tokenizer_file(path: str | Path, config_dir: str | None = None) -> Path:
    """The tokenizer.json that ``tokenizer.path`` names; a relative path is taken
    relative to the config file, as source paths are."""
    p = Path(path).expanduser()
    if not p.is_absolute() and config_dir is not None:
        p = Path(config_dir) / p
    if p.is_dir():
        f = p / "tokenizer.json"
        if not f.is_file():
            raise TokenizerPathError(
                f"tokenizer.path: {p} has no tokenizer.json (a 'fast' tokenizer). A directory with only "
                "a slow tokenizer (e.g. tokenizer.model) can be converted once with transformers: "
                f"AutoTokenizer.from_pretrained('{p}').save_pretrained('{p}-fast')")
        return f
    if not p.exists():
        raise TokenizerPathError(f"tokenizer.path: {p} does not exist; give a tokenizer.json or a "
                                 "Hugging Face tokenizer directory")
    return p


def load_tokenizer_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        raise TokenizerPathError(f"tokenizer.path: {path} is not a tokenizer.json the `tokenizers` "
                                 f"library can read ({e})") from None


def _find(tok: Tokenizer, role: str, configured: str, own: str | None) -> tuple[str, bool]:
    """(token text, added?) for the eos or pad role."""
    for name in [own, configured, *COMMON_NAMES[role]]:
        if name and tok.token_to_id(name) is not None:
            return name, False
    tok.add_special_tokens([AddedToken(configured, special=True, normalized=False)])
    return configured, True


def adopt_tokenizer(cfg: RunConfig, run: RunDir) -> dict[str, Any]:
    tcfg = cfg.tokenizer
    file = resolve_tokenizer_file(tcfg.path, cfg.config_dir)  # type: ignore[arg-type]
    tok = load_tokenizer_file(file)
    source_dir = file.parent
    own = special_token_names(source_dir) if (source_dir / "tokenizer_config.json").is_file() else {}
    eos, eos_added = _find(tok, "eos", tcfg.eos_token, own.get("eos"))
    pad, pad_added = _find(tok, "pad", tcfg.pad_token, own.get("pad"))
    for role, name, added in (("end-of-text", eos, eos_added), ("padding", pad, pad_added)):
        if added:
            log(f"[yellow]tokenizer: {file} has no {role} token; added {name!r} as id "
                f"{tok.token_to_id(name)}[/yellow]")
    vocab = tok.get_vocab_size()
    if vocab > cfg.vocab_size:
        raise TokenizerPathError(
            f"the tokenizer at {file} has {vocab} tokens but the model's vocabulary is "
            f"{cfg.vocab_size}: set tokenizer.vocab_size: {vocab} (or model.vocab_size >= {vocab})")
    with atomic_directory(run.tokenizer) as tmp:
        tok.save(str(Path(tmp) / "tokenizer.json"))
        for name in COPIED_FILES:
            if (source_dir / name).is_file() and file.name == "tokenizer.json":
                shutil.copyfile(source_dir / name, Path(tmp) / name)
        conf_path = Path(tmp) / "tokenizer_config.json"
        conf = json.loads(conf_path.read_text(encoding="utf-8")) if conf_path.is_file() else {
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        conf.update({"eos_token": eos, "pad_token": pad, "model_max_length": cfg.model.seq_len})
        if not conf.get("chat_template"):
            # fmforge's template, its role markers as plain text (this vocabulary
            # has no such tokens): what the server's fallback renders too
            conf["chat_template"] = chat_template(tcfg)
        atomic_write_json(conf_path, conf)
        atomic_write_json(Path(tmp) / "byo.json", {
            "path": str(file), "eos_token": eos, "pad_token": pad,
            "added": [n for n, a in ((eos, eos_added), (pad, pad_added)) if a], "vocab_size": vocab})
    log(f"tokenizer: using {file} ({vocab:,} tokens; end of text {eos!r}, padding {pad!r})")
    return {"vocab_size": vocab, "path": str(file), "eos_token": eos, "pad_token": pad}
