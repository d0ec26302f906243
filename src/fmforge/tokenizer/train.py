"""Train a byte-level BPE tokenizer with HF ``tokenizers``.

The output directory holds ``tokenizer.json`` plus ``tokenizer_config.json`` and
``special_tokens_map.json`` so ``transformers.AutoTokenizer`` /
``PreTrainedTokenizerFast`` load it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fmforge.config import RunConfig, TokenizerConfig
from fmforge.data.shards import iter_split_texts
from fmforge.progress import log, progress_bar
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    # The trainer gives special tokens the first ids in this order: EOS is 0, PAD 1.
    return [cfg.eos_token, cfg.pad_token, *cfg.extra_special_tokens]


def _training_texts(run: RunDir, limit: int | None, bar) -> Iterator[str]:
    seen = 0
    for text in iter_split_texts(run.data, "train"):
        if limit is not None and seen >= limit:
            return
        encoded_len = len(text.encode("utf-8"))
        if limit is not None and seen + encoded_len > limit:
            text = text[: max(0, limit - seen)]
            encoded_len = len(text.encode("utf-8"))
        seen += encoded_len
        bar.advance(encoded_len)
        yield text


def build_tokenizer(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    # GPT-2 style byte-level pre-tokenisation: any UTF-8 input is representable,
    # so there is no unknown token.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def run_tokenizer_stage(cfg: RunConfig, run: RunDir) -> dict:
    tcfg = cfg.tokenizer
    card = run.read_data_card()
    train_bytes = int(card["splits"]["train"]["bytes"])
    budget = min(train_bytes, tcfg.max_train_bytes or train_bytes)
    tok, trainer = build_tokenizer(tcfg)
    with progress_bar("training tokenizer", total=budget, unit="bytes") as bar:
        tok.train_from_iterator(_training_texts(run, tcfg.max_train_bytes, bar), trainer=trainer)
    vocab = tok.get_vocab_size()
    if vocab < tcfg.vocab_size:
        log(
            f"[yellow]tokenizer: the corpus supports only {vocab} tokens "
            f"(asked for tokenizer.vocab_size={tcfg.vocab_size}); the model keeps "
            f"{tcfg.vocab_size} rows so shapes match the config[/yellow]"
        )
    with atomic_directory(run.tokenizer) as tmp:
        save_tokenizer(tok, tcfg, Path(tmp), cfg.model.seq_len)
    return {"vocab_size": vocab, "trained_on_bytes": budget}


def save_tokenizer(tok: Tokenizer, cfg: TokenizerConfig, out: Path, model_max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "bos_token": None,
            "eos_token": cfg.eos_token,
            "pad_token": cfg.pad_token,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        },
    )
    atomic_write_json(
        out / "special_tokens_map.json",
        {"eos_token": cfg.eos_token, "pad_token": cfg.pad_token,
         "additional_special_tokens": list(cfg.extra_special_tokens)},
    )
