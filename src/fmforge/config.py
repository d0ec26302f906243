"""The typed run configuration: one YAML file, validated, with dotted overrides.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key is an
error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fmforge.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem a user can fix; the message names the key."""


class EmptyHeldOutError(ConfigError):
    """The held-out split has nothing to evaluate: data.val_fraction (or the data) leaves it
    empty, and the message says so."""


_NUMBERS = (int, float, int | None, float | None)


def _simple_name(kind: str, v: str) -> str:
    """Names become directory and file names: no separators or spaces."""
    if not v or any(c in v for c in "/\\ \t\n"):
        raise ValueError(f"{kind} name {v!r} must be non-empty without slashes or spaces")
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic would read `max_steps: true` as 1; a boolean for a number is a slip.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and field.annotation in _NUMBERS:
                    raise ValueError(f"{name} must be a number, got {str(value).lower()}")
        return data


# --------------------------------------------------------------------------- data


SOURCE_TYPES = ("text", "jsonl", "parquet", "csv", "html", "warc", "wet", "hf_disk")
FILTER_PRESETS = ("none", "web", "prose", "code")


# Source types whose records have fields a source can be grouped by.
GROUPABLE_TYPES = ("jsonl",)


class SourceConfig(Section):
    """One corpus source. ``paths`` are glob patterns (local paths or fsspec URLs);
    ``{python_stdlib}``, ``{site_packages}``, ``{home}`` and ``{config_dir}`` are
    resolved at run time."""

    name: str
    type: Literal["text", "jsonl", "parquet", "csv", "html", "warc", "wet", "hf_disk"] = "text"
    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    # jsonl: the key holding the text (a dotted path reaches into nested objects).
    text_field: str = "text"
    # parquet, csv, hf_disk: the column holding the text.
    text_column: str = "text"
    # hf_disk: which split of a saved DatasetDict (None: the only one, or "train").
    hf_split: str | None = None
    # Mixture weight in "epochs", The Pile's convention: 2.0 puts every training
    # document of this source in the mix twice, 0.5 keeps half of them.
    weight: float = Field(default=1.0, gt=0)
    # Instead of a weight: this source's share of data.total_tokens (the tokenize
    # stage repeats or subsamples the source's documents to reach it).
    share: float | None = Field(default=None, gt=0, le=1)
    # Keep at most this many bytes of accepted text, in reading order (None: all).
    max_bytes: int | None = Field(default=None, gt=0)
    # Filter preset for this source (None: data.filters.preset).
    filters: Literal["none", "web", "prose", "code"] | None = None
    # Keep only documents identified as one of these languages (ISO 639-1 codes
    # as fastText lid.176 writes them, e.g. en, de, fr); None: no language filter.
    languages: list[str] | None = None
    # Split the source into sub-sources by a field of its records (jsonl; a dotted
    # path, e.g. The Pile's meta.pile_set_name): each value becomes the source
    # "NAME/VALUE" with its own weight or share and its own rows everywhere.
    group_by: str | None = None
    # With group_by: a group's weight (the key is the field's value, e.g.
    # "PubMed Abstracts"); groups not named get this source's `weight`.
    group_weights: dict[str, float] = Field(default_factory=dict)
    # With group_by and a token budget: a group's share of data.total_tokens, out of
    # this source's `share`; groups not named split the rest by their size.
    group_shares: dict[str, float] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        return _simple_name("source", v)

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude_is_a_list_of_patterns(cls, v: Any) -> Any:
        # One pattern written without brackets is the usual slip; say how to write it.
        if isinstance(v, str):
            raise ValueError(f"a list of glob patterns, got the string {v!r}; "
                             f"write exclude: [{json.dumps(v)}]")
        if isinstance(v, list):
            for i, p in enumerate(v, 1):
                if isinstance(p, str) and not p.strip():
                    raise ValueError(f"pattern {i} is empty, and an empty pattern leaves nothing out; "
                                     "remove it or write a glob such as \"**/*.gz\"")
        return v

    @field_validator("group_weights", "group_shares")
    @classmethod
    def _positive_per_group(cls, v: dict[str, float], info: Any) -> dict[str, float]:
        bad = {g: w for g, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"every group's value must be > 0; got {bad}")
        if info.field_name == "group_shares" and any(w > 1 for w in v.values()):
            raise ValueError(f"a share is at most 1; got {v}")
        return v

    @model_validator(mode="after")
    def _groups(self) -> SourceConfig:
        where = f"source {self.name!r}"
        if self.group_by is None:
            named = [k for k in ("group_weights", "group_shares") if getattr(self, k)]
            if named:
                raise ValueError(f"{where}: {' and '.join(named)} need group_by (the field whose value names "
                                 "a record's group, e.g. group_by: meta.pile_set_name)")
            return self
        if not self.group_by.strip():
            raise ValueError(f"{where}: group_by is empty; name a field of the records (meta.pile_set_name)")
        if self.type not in GROUPABLE_TYPES:
            fielded = self.type in ("parquet", "csv", "hf_disk")
            raise ValueError(
                f"{where}: group_by needs records with fields, read by type {' or '.join(GROUPABLE_TYPES)}; "
                + (f"type {self.type!r} is not supported yet" if fielded
                   else f"a {self.type!r} source's documents have no fields")
                + " (remove group_by, or split the files into one source per group)")
        if self.group_weights and self.share is not None:
            raise ValueError(f"{where}: give group_weights or a share (with group_shares), not both")
        if self.group_shares:
            if self.share is None:
                raise ValueError(f"{where}: group_shares split the source's share of data.total_tokens; "
                                 "give the source a share too (or use group_weights)")
            if sum(self.group_shares.values()) > self.share + 1e-6:
                raise ValueError(f"{where}: group_shares sum to {sum(self.group_shares.values()):g}, more than "
                                 f"the source's share {self.share:g}; they are shares of data.total_tokens "
                                 "out of the source's own")
        return self

    def group_source(self, group: str) -> str:
        """The name of a group's sub-source: ``NAME/GROUP``."""
        return f"{self.name}/{group}"

    def group_weight(self, group: str) -> float:
        return self.group_weights.get(group, self.weight)


# ---- document filters (thresholds default to the published values) ----


class GopherQualityConfig(Section):
    """Rae et al. 2021 (Gopher, MassiveText), appendix A.1.1."""

    enabled: bool = True
    min_words: int = Field(default=50, ge=0)
    max_words: int = Field(default=100_000, gt=0)
    min_avg_word_length: float = Field(default=3.0, ge=0)
    max_avg_word_length: float = Field(default=10.0, gt=0)
    max_symbol_word_ratio: float = Field(default=0.1, ge=0)  # '#' and '...' per word
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1)
    min_alpha_words_ratio: float = Field(default=0.8, ge=0, le=1)
    min_stop_words: int = Field(default=2, ge=0)


class GopherRepetitionConfig(Section):
    """Rae et al. 2021, table A1: duplicate lines/paragraphs and n-gram repetition."""

    enabled: bool = True
    max_dup_line_fraction: float = Field(default=0.30, ge=0, le=1)
    max_dup_paragraph_fraction: float = Field(default=0.30, ge=0, le=1)
    max_dup_line_char_fraction: float = Field(default=0.20, ge=0, le=1)
    max_dup_paragraph_char_fraction: float = Field(default=0.20, ge=0, le=1)
    # n -> max share of characters in the most frequent n-gram (n = 2, 3, 4)
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> max share of characters in duplicated n-grams (n = 5..10)
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

    @field_validator("max_top_ngram_char_fraction", "max_dup_ngram_char_fraction")
    @classmethod
    def _ngram_sizes(cls, v: dict[int, float]) -> dict[int, float]:
        bad = {n: f for n, f in v.items() if n < 1 or not 0 <= f <= 1}
        if bad:
            raise ValueError(f"n-gram sizes must be >= 1 and fractions within [0, 1]; got {bad}")
        return v


class C4Config(Section):
    """Raffel et al. 2020 (C4), section 2.2: line- and page-level heuristics."""

    enabled: bool = True
    min_words_per_line: int = Field(default=3, ge=0)
    min_sentences: int = Field(default=5, ge=0)
    max_word_length: int = Field(default=1000, gt=0)
    drop_lines_without_terminal_punctuation: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True
    remove_citations: bool = True


class FineWebConfig(Section):
    """Penedo et al. 2024 (FineWeb), section 3.5: the three custom rules."""

    enabled: bool = True
    min_punctuated_line_fraction: float = Field(default=0.12, ge=0, le=1)
    max_short_line_fraction: float = Field(default=0.67, ge=0, le=1)
    short_line_chars: int = Field(default=30, gt=0)
    max_duplicate_line_char_fraction: float = Field(default=0.01, ge=0, le=1)
    max_newline_word_ratio: float = Field(default=0.3, ge=0)


class CodeQualityConfig(Section):
    """Source-code rules in the manner of The Stack / StarCoder (Li et al. 2023)."""

    enabled: bool = True
    max_line_length: int = Field(default=1000, gt=0)
    max_mean_line_length: float = Field(default=100.0, gt=0)
    min_alphanumeric_fraction: float = Field(default=0.25, ge=0, le=1)
    # A document whose first lines carry one of these markers is machine-written.
    autogenerated_markers: list[str] = Field(default_factory=lambda: [
        "auto-generated", "autogenerated", "automatically generated",
        "generated by", "do not edit"])
    autogenerated_scan_lines: int = Field(default=5, ge=0)


class LanguageConfig(Section):
    """Language identification (fastText lid.176, shipped inside a PyPI package)."""

    min_score: float = Field(default=0.65, ge=0, le=1)


class PIIConfig(Section):
    """Redaction of personal data by typed placeholders."""

    enabled: bool = False
    email: bool = True
    ip_address: bool = True
    phone: bool = True
    credit_card: bool = True


class CleaningConfig(Section):
    fix_mojibake: bool = False  # ftfy
    remove_control_characters: bool = True


class FiltersConfig(Section):
    """Quality filters. ``preset`` picks which run (per source with
    ``sources[].filters``); each filter's thresholds are set here."""

    preset: Literal["none", "web", "prose", "code"] = "none"
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    c4: C4Config = Field(default_factory=C4Config)
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)
    code: CodeQualityConfig = Field(default_factory=CodeQualityConfig)


class MinHashConfig(Section):
    """Near-duplicate detection, FineWeb's setting: word 5-grams, 14 bands x 8 rows."""

    ngram: int = Field(default=5, gt=0)
    bands: int = Field(default=14, gt=0)
    rows: int = Field(default=8, gt=0)
    seed: int = 1


class DataConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    min_chars: int = Field(default=32, ge=0)
    max_chars: int | None = Field(default=None, gt=0)
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    dedup: Literal["exact", "minhash", "none"] = "exact"
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    # Write dropped documents (with the reason) to data/rejected/.
    keep_rejected: bool = False
    # With sources[].share: the training mixture's size in tokens.
    total_tokens: int | None = Field(default=None, gt=0)
    # Stop at the first bad input (unreadable file, bad line) instead of counting it.
    strict: bool = False
    executor: Literal["local", "ray"] = "local"
    workers: int | None = Field(default=None, gt=0)  # None: the CPU count
    ray_address: str | None = None  # None: a local Ray instance
    # Where tasks write their intermediate files and completion markers
    # (a local path, NFS, or an fsspec URL); None: runs/NAME/data.work
    work_dir: str | None = None
    # Input bytes per task (a task never splits a file).
    task_bytes: int = Field(default=16_000_000, gt=0)
    shard_max_docs: int = Field(default=50_000, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars={self.max_chars} must be >= min_chars={self.min_chars}")
        shares = {s.name: s.share for s in self.sources}
        if any(v is not None for v in shares.values()) or self.total_tokens is not None:
            missing = [n for n, v in shares.items() if v is None]
            if self.total_tokens is None or missing:
                raise ValueError("a token-budget mixture needs data.total_tokens and a share on every source"
                                 + (f"; no share on: {missing}" if missing else ""))
            if abs(sum(shares.values()) - 1.0) > 1e-6:  # type: ignore[arg-type]
                raise ValueError(f"sources[].share must sum to 1, got {sum(shares.values()):g}")  # type: ignore[arg-type]
            weighted = [s.name for s in self.sources if s.weight != 1.0]
            if weighted:
                raise ValueError(f"give each source a weight or a share, not both: {weighted} have both")
        return self

    @property
    def token_budget(self) -> dict[str, float] | None:
        """source -> share of ``total_tokens``, when the mixture is a token budget."""
        if self.total_tokens is None:
            return None
        return {s.name: float(s.share) for s in self.sources}  # type: ignore[arg-type]


# ---------------------------------------------------------------------- tokenizer


class TokenizerConfig(Section):
    vocab_size: int = Field(default=8192, ge=260, le=1_000_000)
    min_frequency: int = Field(default=2, ge=1)
    # Pre-tokenizer split: GPT-4's (cl100k) regex, or GPT-2's.
    split: Literal["gpt4", "gpt2"] = "gpt4"
    # Bring your own: a tokenizer.json or a Hugging Face tokenizer directory; no training.
    path: str | None = None
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    bos_token: str = "<|startoftext|>"
    # Chat turn markers, reserved with fixed ids after eos, pad and bos.
    chat_roles: list[str] = Field(default_factory=lambda: ["system", "user", "assistant"])
    extra_special_tokens: list[str] = Field(default_factory=list)
    # Train the BPE on at most this many bytes of training text (None: all of it).
    max_train_bytes: int | None = Field(default=None, gt=0)


# -------------------------------------------------------------------------- model


class ModelConfig(Section):
    """A Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    # `model: auto` (short for {auto: true}): width, depth, heads and the tokenizer's
    # vocabulary are chosen for train.max_minutes on this machine by the planner's
    # rule (fmforge.plan.autosize) when a command loads the config; the resolved
    # config.yaml of the run holds the chosen keys. Not part of any fingerprint.
    auto: bool = Field(default=False, exclude=True)
    vocab_size: int | None = Field(default=None, gt=0)  # None: the tokenizer's
    d_model: int = Field(default=256, gt=0)
    n_layers: int = Field(default=4, gt=0)
    n_heads: int = Field(default=4, gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)  # None: n_heads (plain MHA)
    d_ff: int | None = Field(default=None, gt=0)  # None: 8/3·d_model rounded up to multiple_of
    multiple_of: int = Field(default=64, gt=0)
    seq_len: int = Field(default=256, gt=0)
    rope_theta: float = Field(default=10_000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0)
    tie_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)

    @model_validator(mode="after")
    def _heads_consistent(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}"
            )
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ValueError(
                f"model.n_kv_heads={kv} must divide model.n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head dimension d_model/n_heads={self.head_dim} must be even for RoPE"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        hidden = int(8 * self.d_model / 3)
        return self.multiple_of * -(-hidden // self.multiple_of)


# -------------------------------------------------------------------------- train


class StepConfig(Section):
    """The optimization settings of a training loop, shared by ``train:`` (the
    pretraining engine) and ``finetune:``: defined once, documented once."""

    max_steps: int | None = Field(default=1000, gt=0)
    micro_batch_size: int = Field(default=16, gt=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    # cosine: warmup, cosine decay to min_lr_ratio·lr at the last step.
    # wsd: warmup, constant, linear decay over the last decay_fraction of steps
    #      (a finished run can be extended from the checkpoint where decay began).
    # constant: warmup, then constant.
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0: no clipping
    # A step whose loss or gradient norm is not finite is skipped (weights and
    # optimizer untouched); this many in a row stop the run.
    max_skipped_steps: int = Field(default=5, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=200, gt=0)
    eval_batches: int = Field(default=8, gt=0)
    checkpoint_every: int = Field(default=200, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: bfloat16 autocast where the hardware does bf16 matmuls natively (CUDA
    # with bf16, CPUs with AVX512-BF16/AMX), float32 elsewhere. float16: CUDA only,
    # with a gradient scaler.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensorboard: bool = True  # scalars under RUN/tb beside metrics.jsonl
    num_threads: int = Field(default=0, ge=0)  # torch CPU threads; 0: torch's default
    # Recompute each block in the backward pass instead of keeping its activations:
    # less memory, a third more compute (a fine-tune: Hugging Face's gradient
    # checkpointing of the base's layers).
    activation_checkpointing: bool = False


def _default(name: str, value: Any) -> Any:
    """``StepConfig``'s field ``name`` (type, bounds, meaning) with another default:
    for a section whose runs start from somewhere else (a fine-tune)."""
    info = copy.copy(StepConfig.model_fields[name])
    info.default = value
    return info


class TrainConfig(StepConfig):
    # Steps: ``max_steps``, or a wall-clock budget ``max_minutes`` from which the
    # trainer fixes the step count after measuring its first steps (then
    # ``max_steps``, when also given, is an upper bound).
    max_minutes: float | None = Field(default=None, gt=0)
    # The global batch: ``global_batch_tokens`` (micro-batch × seq_len × processes
    # × accumulation), from which accumulation is derived; else ``grad_accum_steps``.
    global_batch_tokens: int | None = Field(default=None, gt=0)
    compile: bool = False  # torch.compile the model
    # Under torchrun: none (refuses more than one process), ddp, fsdp (FSDP2), or
    # hsdp (FSDP2 on a 2-D mesh: shard within a group of processes, replicate the
    # groups; gradients reduce-scatter inside a group, all-reduce across groups).
    parallel: Literal["none", "ddp", "fsdp", "hsdp"] = "ddp"
    # hsdp: how many replicas (groups that each hold a whole sharded copy). None:
    # one per node, so shards stay on a node's fast links and only the gradient
    # all-reduce crosses nodes. The processes must divide evenly into them.
    replicate_degree: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _minutes_decide(cls, data: Any) -> Any:
        # A budget in minutes without a step count of the user's: the minutes decide.
        # The default step count is for runs without a budget; as a silent cap it
        # stopped a 2-minute run of a small model after 88 s.
        if isinstance(data, dict) and data.get("max_minutes") is not None and "max_steps" not in data:
            data = {**data, "max_steps": None}
        return data

    @model_validator(mode="after")
    def _steps_known(self) -> TrainConfig:
        if self.replicate_degree is not None and self.parallel != "hsdp":
            raise ValueError(f"train.replicate_degree={self.replicate_degree} applies to "
                             f"train.parallel: hsdp, not {self.parallel}: set train.parallel=hsdp "
                             "or remove train.replicate_degree")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("set train.max_steps or train.max_minutes")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(
                f"train.warmup_steps={self.warmup_steps} must be <= train.max_steps={self.max_steps}"
            )
        if self.max_minutes is not None and self.schedule != "constant" \
                and self.warmup_steps < BUDGET_PROBE_STEPS:
            # The step count is decided after the probe steps; until then the
            # learning rate must not depend on it, which holds during warmup.
            raise ValueError(
                f"train.max_minutes needs train.warmup_steps >= {BUDGET_PROBE_STEPS} (the steps "
                "that measure the speed run in warmup, whose learning rate does not depend on "
                f"the step count), got {self.warmup_steps}"
            )
        return self

    def grad_accum_for(self, seq_len: int, world_size: int) -> int:
        """Micro-batches per process per step: from ``global_batch_tokens`` when set."""
        if self.global_batch_tokens is None:
            return self.grad_accum_steps
        per_micro = self.micro_batch_size * seq_len * world_size
        if self.global_batch_tokens % per_micro:
            raise ConfigError(
                f"train.global_batch_tokens={self.global_batch_tokens:,} is not a multiple of "
                f"micro_batch_size × seq_len × processes = {self.micro_batch_size} × {seq_len} × "
                f"{world_size} = {per_micro:,}: change one of them"
            )
        return self.global_batch_tokens // per_micro

    def tokens_per_step(self, seq_len: int, world_size: int = 1) -> int:
        """Tokens in one optimizer step across all processes."""
        return self.micro_batch_size * seq_len * world_size * self.grad_accum_for(seq_len, world_size)


# What `model: auto` chooses (with tokenizer.vocab_size unless that is set).
AUTO_SIZED_KEYS = frozenset({"d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size"})

# Steps the trainer times before fixing the step count of a ``max_minutes`` run
# (the first two, which warm up allocators and kernels, are not counted).
BUDGET_PROBE_STEPS = 8


# --------------------------------------------------------------------------- eval


class EvalConfig(Section):
    batch_size: int = Field(default=8, gt=0)
    # Evaluate at most this many held-out tokens (None: the whole val split).
    max_tokens: int | None = Field(default=None, gt=0)
    # Sliding-window stride in tokens (None: the window, non-overlapping windows).
    stride: int | None = Field(default=None, gt=0)
    # Fixed prompts the run report completes greedily at the latest checkpoint.
    report_prompts: list[str] = Field(default_factory=lambda: ["The ", "def ", "# "])
    report_max_new_tokens: int = Field(default=48, ge=0)
    # After `fmforge run`, print a completion of this prompt (None: no sample).
    sample_prompt: str | None = None
    sample_max_new_tokens: int = Field(default=64, ge=0)
    sample_temperature: float = Field(default=0.8, ge=0)  # 0: greedy
    sample_top_k: int | None = Field(default=40, gt=0)


# --------------------------------------------------------------------------- plan


class PlanConfig(Section):
    """What the run will be priced at; used by ``fmforge plan`` and the run summary."""

    gpu: str = "h100-sxm"
    num_gpus: int = Field(default=1, gt=0)
    mfu: float | None = Field(default=None, gt=0, le=1)
    price_per_gpu_hour: float | None = Field(default=None, ge=0)


class LadderConfig(Section):
    """``fmforge ladder``: small models of the config's family trained on the run's
    data, and the scaling law fitted to their held-out bits per byte."""

    # Rungs as "d_model x n_layers" (e.g. ["64x1", "64x2", "128x2"]); None: the
    # default sizes smaller than the config's model.
    sizes: list[str] | None = None
    # Each rung's budget: tokens per non-embedding parameter, or a total number of
    # minutes shared equally by the rungs (then tokens_per_param must be null).
    tokens_per_param: float | None = Field(default=20.0, gt=0)
    minutes: float | None = Field(default=None, gt=0)
    samples: int = Field(default=200, ge=0)  # bootstrap resamples for the intervals

    @model_validator(mode="after")
    def _one_budget(self) -> LadderConfig:
        if self.minutes is not None and self.tokens_per_param is not None:
            raise ValueError("ladder: give minutes or tokens_per_param, not both "
                             "(set ladder.tokens_per_param=null to use minutes)")
        if self.minutes is None and self.tokens_per_param is None:
            raise ValueError("ladder: give ladder.tokens_per_param or ladder.minutes")
        return self


class DatamixConfig(Section):
    """``fmforge datamix``: variants of the data compared by small proxy models on
    one target (docs/datamix.md); each of the command's options overrides its key."""

    # Variants as dotted data overrides, as --try: "data.sources.1.weight=0.5,2" is
    # one variant per value.
    variants: list[str] = Field(default_factory=list)
    ablate_sources: bool = False  # also the mixture without each source in turn
    weights_grid: bool = False  # also each source's weight x0.5 and x2, one at a time
    seeds: int = Field(default=2, ge=2)  # proxies per variant, for the seed noise
    # The proxy model as "d_model x n_layers" (None: the smallest ladder rung of 2+ layers).
    size: str | None = None
    # Each proxy's budget: tokens per non-embedding parameter, or a total number of
    # minutes for all the proxies (then tokens_per_param must be null).
    tokens_per_param: float | None = Field(default=20.0, gt=0)
    minutes: float | None = Field(default=None, gt=0)
    # What the proxies are scored on: ["heldout"], ["source:NAME"], or files (globs
    # relative to the config's directory).
    target: list[str] = Field(default_factory=lambda: ["heldout"])

    @field_validator("target", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_budget(self) -> DatamixConfig:
        if self.minutes is not None and self.tokens_per_param is not None:
            raise ValueError("datamix: give minutes or tokens_per_param, not both "
                             "(set datamix.tokens_per_param=null to use minutes)")
        if self.minutes is None and self.tokens_per_param is None:
            raise ValueError("datamix: give datamix.tokens_per_param or datamix.minutes")
        return self


# ----------------------------------------------------------------------- finetune


class LoraConfig(Section):
    """LoRA adapters (Hu et al. 2021) through the ``peft`` library."""

    r: int = Field(default=16, gt=0)
    alpha: float = Field(default=32.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # Names of the linear layers that get adapters (None: the family's defaults,
    # every attention and MLP projection; see docs/finetune.md).
    target_modules: list[str] | None = None


class FinetuneConfig(StepConfig):
    """Customize a pretrained Hugging Face causal LM: LoRA, QLoRA or full fine-tuning
    on chat / prompt-completion JSONL, or continued pretraining on token shards.
    The optimization keys are ``train:``'s (``StepConfig``), with defaults for a
    model that is already trained: a small learning rate, no warmup or decay."""

    # A local Hugging Face model directory, or an fmforge run (directory or name
    # under runs/), exported to Hugging Face format first.
    base: str
    method: Literal["lora", "qlora", "full"] = "lora"
    # examples: chat or prompt/completion JSONL (finetune.data), loss on the
    # assistant/completion tokens only. tokens: the run's own token shards (from
    # the data and tokenize stages), every token (continued pretraining).
    train_on: Literal["examples", "tokens"] = "examples"
    data: list[str] = Field(default_factory=list)  # JSONL files or glob patterns
    val_data: list[str] = Field(default_factory=list)  # held-out JSONL (empty: val_fraction)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    # auto: the base tokenizer's chat template if it has one, else fmforge's.
    template: Literal["auto", "base", "fmforge"] = "auto"
    packing: bool = False  # several short examples per sequence (attention kept apart)
    max_bad_fraction: float = Field(default=0.05, ge=0, le=1)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    seq_len: int = Field(default=512, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    # Where the adapter (lora, qlora) or the model (full) is written; None:
    # runs/NAME/finetune/adapter or runs/NAME/finetune/model.
    output: str | None = None

    max_steps: int | None = _default("max_steps", None)  # None: from epochs
    micro_batch_size: int = _default("micro_batch_size", 8)
    lr: float = _default("lr", 2e-4)
    warmup_steps: int = _default("warmup_steps", 0)
    min_lr_ratio: float = _default("min_lr_ratio", 0.0)
    weight_decay: float = _default("weight_decay", 0.0)
    eval_every: int = _default("eval_every", 100)
    checkpoint_every: int = _default("checkpoint_every", 100)

    @model_validator(mode="after")
    def _data_given(self) -> FinetuneConfig:
        if self.train_on == "examples" and not self.data:
            raise ValueError("finetune.data must name the training JSONL files (or set "
                             "finetune.train_on=tokens for continued pretraining)")
        if self.train_on == "tokens" and self.method != "full":
            raise ValueError("finetune.train_on=tokens (continued pretraining) needs "
                             f"finetune.method=full, got {self.method}")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"finetune.warmup_steps={self.warmup_steps} must be <= "
                             f"finetune.max_steps={self.max_steps}")
        return self

    def train_view(self, max_steps: int) -> TrainConfig:
        """The training engine's settings for this run: every ``StepConfig`` key as
        given under ``finetune:``, in one process."""
        shared = {name: getattr(self, name) for name in StepConfig.model_fields}
        return TrainConfig(**{**shared, "max_steps": max_steps,
                              "warmup_steps": min(self.warmup_steps, max_steps)}, parallel="none")


# ------------------------------------------------------------------------- export


class ExportConfig(Section):
    """What an export says about the model (``fmforge export gguf``'s ``general.*``
    metadata, the model card): who made it, under which license, where it lives.
    Read from the run's ``config.yaml`` when exporting, so it can be set after
    training without invalidating any stage."""

    name: str | None = None  # None: the run's name
    description: str | None = None  # None: a one-line summary written by the export
    license: str | None = None  # an SPDX id as the Hub's `license:` takes it, e.g. apache-2.0
    source_url: str | None = None  # where the model is published or described
    author: str | None = None  # a person or organisation

    @field_validator("name", "description", "license", "source_url", "author")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank: leave the key out (or null) for none")
        return v


# ---------------------------------------------------------------------------- run


class RunConfig(Section):
    name: str
    out_dir: str | None = None  # default: runs/NAME
    seed: int = 1337
    # Required by every stage but `fmforge finetune` on JSONL examples.
    data: DataConfig | None = None
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    ladder: LadderConfig = Field(default_factory=LadderConfig)  # `fmforge ladder`
    datamix: DatamixConfig = Field(default_factory=DatamixConfig)  # `fmforge datamix`
    finetune: FinetuneConfig | None = None  # `fmforge finetune`
    export: ExportConfig = Field(default_factory=ExportConfig)  # what exports say about the model
    # Directory of the YAML file, for ``{config_dir}`` in source paths. Not a user key.
    config_dir: str | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        return _simple_name("run", v)

    @model_validator(mode="before")
    @classmethod
    def _model_auto(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            if data["model"].strip().lower() != "auto":
                raise ValueError(f"model must be a section of keys or `auto`, got {data['model']!r}")
            data = {**data, "model": {"auto": True}}
        return data

    @model_validator(mode="after")
    def _auto_model_sizable(self) -> RunConfig:
        if not self.model.auto:
            return self
        given = sorted(AUTO_SIZED_KEYS & self.model.model_fields_set)
        if given:
            raise ValueError(
                f"model: auto chooses {', '.join('model.' + k for k in sorted(AUTO_SIZED_KEYS))}; "
                f"remove {', '.join('model.' + k for k in given)} (or drop `auto` and size the model by hand)")
        if self.train.max_minutes is None:
            raise ValueError("model: auto sizes the model for a time budget: set train.max_minutes "
                             "(e.g. train.max_minutes: 10), or give the model's size keys")
        return self

    @model_validator(mode="after")
    def _vocab_consistent(self) -> RunConfig:
        if self.data is None and (self.finetune is None or self.finetune.train_on == "tokens"):
            raise ValueError("data: required key is missing (only a config for `fmforge finetune` "
                             "on JSONL examples may leave it out)")
        if self.model.vocab_size is not None and self.model.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(
                f"model.vocab_size={self.model.vocab_size} must be >= "
                f"tokenizer.vocab_size={self.tokenizer.vocab_size}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's unless set larger (e.g. padded)."""
        self._require_sized()
        return self.model.vocab_size or self.tokenizer.vocab_size

    def resolved_model(self) -> ModelConfig:
        """The model section with ``vocab_size`` filled in."""
        self._require_sized()
        return self.model.model_copy(update={"vocab_size": self.vocab_size})

    def _require_sized(self) -> None:
        if self.model.auto:
            raise ConfigError("model: auto is not sized yet: the fmforge command sizes it when it loads "
                              "the config (from Python: fmforge.plan.autosize.resolve_auto_model(cfg))")

    def with_model_size(self, d_model: int, n_layers: int, n_heads: int, vocab_size: int) -> RunConfig:
        """This config with the model sized (``model: auto`` resolved): the tokenizer's
        vocabulary too, unless it was set by hand or comes from a brought tokenizer."""
        fixed_vocab = "vocab_size" in self.tokenizer.model_fields_set or self.tokenizer.path is not None
        raw = self.model_dump(mode="json")
        raw["model"] = {**raw["model"], "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}
        if not fixed_vocab:
            raw["tokenizer"]["vocab_size"] = vocab_size
        return config_from_dict(raw, self.config_dir)

    def to_yaml(self) -> str:
        """The fully resolved config: defaults filled in, and source paths (and
        ``tokenizer.path``) relative to the config file made absolute, so the copy in the run directory runs
        from anywhere. Machine placeholders such as {python_stdlib} stay."""
        raw = self.model_dump(mode="json")
        if self.config_dir is not None and raw.get("data"):
            for source in raw["data"]["sources"]:
                source["paths"] = [_absolute(p, self.config_dir) for p in source["paths"]]
        if self.config_dir is not None and raw.get("tokenizer", {}).get("path"):
            raw["tokenizer"]["path"] = _absolute(raw["tokenizer"]["path"], self.config_dir)
        return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------ loading


def _absolute(pattern: str, config_dir: str) -> str:
    pattern = pattern.replace("{config_dir}", config_dir)
    if pattern.startswith(("{", "~")) or os.path.isabs(pattern):
        return pattern
    return os.path.normpath(os.path.join(config_dir, pattern))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping (a second
    ``train:`` section would otherwise silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: key "
                    f"{key!r} is given twice in the same section (first on line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/demo.yaml for every key)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, parts[: i + 1])
                continue
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
        last = parts[-1]
        if isinstance(node, list):
            idx = _list_index(node, last, parts)
            node[idx] = value
        else:
            node[last] = value
    return out


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"override key {'.'.join(path)}: {part!r} is not an index of a list of {len(node)}"
        )
    return int(part)


def _list_item(node: list, part: str, path: list[str]) -> Any:
    return node[_list_index(node, part, path)]


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config. Raises ConfigError with the key named."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it "
                          "as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    raw.pop("config_dir", None)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        source = str(path) + (" with overrides " + " ".join(overrides) if overrides else "")
        raise ConfigError(_format_validation_error(err, source)) from None
    cfg.config_dir = str(path.resolve().parent)
    return cfg


def config_from_dict(raw: dict[str, Any], config_dir: str | None = None) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "config")) from None
    cfg.config_dir = config_dir
    return cfg
