"""Train a byte-level BPE tokenizer with HF ``tokenizers`` (or adopt the user's
own, ``tokenizer.path``: see ``byo.py``).

The pre-tokenizer splits text before BPE merges: ``tokenizer.split: gpt4`` (the
default) is GPT-4's cl100k regex (contractions, letters with one leading
non-letter, digits in groups of at most three, punctuation runs, newlines kept
apart from other whitespace), ``gpt2`` is GPT-2's. Both run on bytes, so any
UTF-8 input is representable and there is no unknown token.

The training sample is the first ``tokenizer.max_train_bytes`` of the training
split, which the data stage wrote as one seeded shuffle of the weighted mixture:
the sample holds each source in proportion to its mixture share, not the first
files. Its bytes per source are recorded in ``tokenizer/training_sample.json``.

The output directory holds ``tokenizer.json`` plus ``tokenizer_config.json``
(with a Jinja ``chat_template``) and ``special_tokens_map.json`` so
``transformers.AutoTokenizer`` loads it unchanged and ``apply_chat_template``
works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from fmforge.config import RunConfig, TokenizerConfig
from fmforge.data.shards import iter_split_records
from fmforge.progress import log, progress_bar
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json
from fmforge.tokenizer.specials import chat_template, special_tokens

# GPT-4's (cl100k_base) split, as the Llama 3 tokenizer also uses it.
GPT4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TRAINING_SAMPLE = "training_sample.json"


def pre_tokenizer(split: str) -> pre_tokenizers.PreTokenizer:
    if split == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


class _Sample:
    """The training texts: a prefix of the shuffled train split, bytes counted per source."""

    def __init__(self, run: RunDir, limit: int | None, bar):
        self.run, self.limit, self.bar = run, limit, bar
        self.per_source: dict[str, int] = {}

    def __iter__(self) -> Iterator[str]:
        seen = 0
        for rec in iter_split_records(self.run.data, "train", columns=("text", "source")):
            text = rec["text"]
            if self.limit is not None and seen >= self.limit:
                return
            n = len(text.encode("utf-8"))
            if self.limit is not None and seen + n > self.limit:
                # cut at the byte budget, never inside a character
                text = text.encode("utf-8")[: max(0, self.limit - seen)].decode("utf-8", errors="ignore")
                n = len(text.encode("utf-8"))
            seen += n
            self.per_source[rec["source"]] = self.per_source.get(rec["source"], 0) + n
            self.bar.advance(n)
            yield text


def build_tokenizer(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(cfg.split)
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
    if tcfg.path is not None:
        from fmforge.tokenizer.byo import adopt_tokenizer

        return adopt_tokenizer(cfg, run)
    card = run.read_data_card()
    train_bytes = int(card["splits"]["train"]["bytes"])
    budget = min(train_bytes, tcfg.max_train_bytes or train_bytes)
    tok, trainer = build_tokenizer(tcfg)
    with progress_bar("training tokenizer", total=budget, unit="bytes") as bar:
        sample = _Sample(run, tcfg.max_train_bytes, bar)
        tok.train_from_iterator(sample, trainer=trainer)
    vocab = tok.get_vocab_size()
    if vocab < tcfg.vocab_size:
        log(
            f"[yellow]tokenizer: the corpus supports only {vocab} tokens "
            f"(asked for tokenizer.vocab_size={tcfg.vocab_size}); the model keeps "
            f"{tcfg.vocab_size} rows so shapes match the config[/yellow]"
        )
    total = sum(sample.per_source.values())
    shares = {k: round(v / total, 4) for k, v in sorted(sample.per_source.items())} if total else {}
    with atomic_directory(run.tokenizer) as tmp:
        save_tokenizer(tok, tcfg, Path(tmp), cfg.model.seq_len)
        atomic_write_json(Path(tmp) / TRAINING_SAMPLE, {
            "bytes": total, "bytes_per_source": dict(sorted(sample.per_source.items())),
            "share_per_source": shares, "split": tcfg.split})
    log("tokenizer: trained on " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) + " of the sample")
    return {"vocab_size": vocab, "trained_on_bytes": total, "split": tcfg.split}


def reserved_token_ids(tok: Tokenizer, cfg: TokenizerConfig) -> dict[str, int]:
    """The recorded id of every reserved token the tokenizer has."""
    ids = {t: tok.token_to_id(t) for t in special_tokens(cfg)}
    return {t: i for t, i in ids.items() if i is not None}


def save_tokenizer(tok: Tokenizer, cfg: TokenizerConfig, out: Path, model_max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    extra = [t for t in special_tokens(cfg) if t not in (cfg.eos_token, cfg.pad_token, cfg.bos_token)]
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "bos_token": cfg.bos_token if tok.token_to_id(cfg.bos_token) is not None else None,
            "eos_token": cfg.eos_token,
            "pad_token": cfg.pad_token,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "additional_special_tokens": [t for t in extra if tok.token_to_id(t) is not None],
            "chat_template": chat_template(cfg),
            "fmforge_special_token_ids": reserved_token_ids(tok, cfg),
        },
    )
    atomic_write_json(
        out / "special_tokens_map.json",
        {"bos_token": cfg.bos_token, "eos_token": cfg.eos_token, "pad_token": cfg.pad_token,
         "additional_special_tokens": [t for t in extra if tok.token_to_id(t) is not None]},
    )
