"""Fine-tuning examples: chat and prompt/completion JSONL, rendered with a chat
template, tokenized with a loss mask, optionally packed, batched by step.

Two line formats::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"prompt": "...", "completion": "..."}

A chat example is rendered with the base tokenizer's chat template (or
fmforge's, the one ``fmforge serve`` prompts with); a prompt/completion example
is plain text, ``prompt + completion + EOS``, as ``fmforge generate --prompt``
continues it. Only assistant (completion) tokens carry loss: the label of every
other token is ``IGNORE`` (-100, what ``torch.nn.functional.cross_entropy``
skips).

The assistant spans are found by rendering: for each assistant turn ``i``, the
conversation up to ``i`` with the generation prompt is a prefix of the
conversation through ``i``, and the characters between the two are the reply
(with whatever end-of-turn marker the template writes, which the model must
learn to emit). A token belongs to the reply when its first character does.
This works for any template that renders a conversation as an extension of its
prefixes, and is checked for each example.

A bad line (not JSON, an unknown or missing role, empty content, no assistant
turn, longer than the sequence length) is reported with file and line and
counted; more than ``max_bad_fraction`` of bad lines stops the run.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from fmforge.errors import InputFileMissing, UserError

IGNORE = -100
ROLES = ("system", "user", "assistant")

# fmforge's chat template, for a base tokenizer without one: the format of
# fmforge.serve.chat_template.simple_prompt, with EOS after each reply so a
# fine-tuned model learns to stop. Written with string literals because Jinja's
# trim_blocks (which transformers and the server enable) eats a newline after a tag.
FMFORGE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class DataError(UserError, ValueError):
    """The examples cannot be used as given; the message says where and why."""


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Example:
    """One conversation (``messages``) or prompt/completion pair, and where it came from."""

    file: str
    line: int
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    file: str = ""
    line: int = 0

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class ReadReport:
    lines: int = 0
    bad: list[BadLine] = field(default_factory=list)

    def add(self, other: ReadReport) -> None:
        self.lines += other.lines
        self.bad += other.bad


# ---------------------------------------------------------------- reading lines


def expand_paths(patterns: Iterable[str], base_dir: str | None = None) -> list[Path]:
    """Files named by ``patterns`` (globs; relative ones against ``base_dir``), sorted.
    A pattern that matches nothing is an error naming it."""
    out: list[Path] = []
    for pattern in patterns:
        full = os.path.expanduser(pattern)
        if base_dir and not os.path.isabs(full):
            full = os.path.join(base_dir, full)
        found = sorted(glob.glob(full, recursive=True))
        if not found:
            raise InputFileMissing(f"finetune data {pattern!r} matches no file (looked for {full})")
        out += [Path(f) for f in found if Path(f).is_file()]
    return out


def _check_line(obj: Any) -> tuple[dict | None, str | None]:
    """(fields of the example, None) or (None, why the line is bad)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, "'messages' must be a non-empty list"
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                return None, f"messages[{i}] is not an object"
            role, content = m.get("role"), m.get("content")
            if role is None:
                return None, f"messages[{i}] has no 'role'"
            if role not in ROLES:
                return None, f"messages[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})"
            if not isinstance(content, str):
                return None, f"messages[{i}] ({role}) has no text 'content'"
            if not content.strip():
                return None, f"messages[{i}] ({role}) has empty content"
            clean.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in clean):
            return None, "no assistant message: nothing to learn from"
        return {"messages": clean}, None
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            value = obj.get(key)
            if not isinstance(value, str):
                return None, f"'{key}' is missing or not a string"
        if not obj["completion"].strip():
            return None, "'completion' is empty"
        return {"prompt": obj["prompt"], "completion": obj["completion"]}, None
    return None, "neither 'messages' nor 'prompt'/'completion'"


def read_examples(path: Path) -> tuple[list[Example], ReadReport]:
    """Every good example of a JSONL file, and its bad lines (blank lines are skipped)."""
    examples, report = [], ReadReport()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            report.lines += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                report.bad.append(BadLine(str(path), lineno, f"not UTF-8 ({exc.reason})"))
                continue
            except json.JSONDecodeError as exc:
                report.bad.append(BadLine(str(path), lineno, f"not JSON ({exc.msg}, column {exc.colno})"))
                continue
            fields, why = _check_line(obj)
            if why:
                report.bad.append(BadLine(str(path), lineno, why))
                continue
            examples.append(Example(file=str(path), line=lineno, **fields))
    return examples, report


def check_bad_fraction(report: ReadReport, max_bad_fraction: float, what: str = "lines") -> None:
    if report.lines == 0:
        raise DataError("the finetune data holds no examples (every file is empty)")
    share = len(report.bad) / report.lines
    if share > max_bad_fraction:
        shown = "\n  ".join(str(b) for b in report.bad[:10])
        more = f"\n  ... and {len(report.bad) - 10} more" if len(report.bad) > 10 else ""
        raise DataError(
            f"{len(report.bad):,} of {report.lines:,} {what} are bad ({share:.1%}, more than "
            f"finetune.max_bad_fraction={max_bad_fraction:g}):\n  {shown}{more}\n"
            "fix them, or raise finetune.max_bad_fraction to skip them")


# ------------------------------------------------------------------ templates


def ensure_chat_template(tokenizer, mode: str) -> str:
    """Give ``tokenizer`` the template to train with (``auto``: its own if it has
    one, else fmforge's). Returns which one: "base" or "fmforge"."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "base" and not has:
        raise DataError("finetune.template=base, but the base tokenizer has no chat_template: "
                        "use template=auto or fmforge")
    if mode == "fmforge" or not has:
        tokenizer.chat_template = FMFORGE_CHAT_TEMPLATE
        return "fmforge"
    return "base"


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant replies."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else _render_empty(tokenizer)
        through = _render(tokenizer, messages[: i + 1], False)
        if not through.startswith(before) or not full.startswith(through):
            raise DataError("the chat template does not render a conversation as an extension "
                            "of its beginning, so the reply tokens cannot be located: use "
                            "finetune.template=fmforge")
        spans.append((len(before), len(through)))
    return full, spans


def _render_empty(tokenizer) -> str:
    try:
        return tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates that index messages[0] fail on none
        return ""


def bos_ids(tokenizer) -> list[int]:
    """A BOS id when the tokenizer adds one to plain text (Llama's does)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and ids and ids[0] == bos else []


def tokenize_example(tokenizer, ex: Example) -> Tokenized:
    if ex.messages is not None:
        text, spans = assistant_spans(tokenizer, ex.messages)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = []
        for tok_id, (start, end) in zip(ids, enc["offset_mapping"]):
            inside = any(a <= start < b for a, b in spans) if end > start else False
            labels.append(tok_id if inside else IGNORE)
        # A template that does not begin with BOS itself gets the tokenizer's.
        bos = bos_ids(tokenizer)
        if bos and (not ids or ids[0] != bos[0]):
            ids, labels = bos + ids, [IGNORE] + labels
        return Tokenized(ids, labels, ex.file, ex.line)
    prompt = bos_ids(tokenizer) + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    return Tokenized(prompt + completion, [IGNORE] * len(prompt) + completion, ex.file, ex.line)


def tokenize_examples(tokenizer, examples: list[Example], seq_len: int,
                      report: ReadReport) -> list[Tokenized]:
    """Tokenize; an example longer than ``seq_len`` (or with no reply token left) is a
    bad line in ``report``."""
    out = []
    for ex in examples:
        try:
            t = tokenize_example(tokenizer, ex)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template's raise_exception, e.g. roles out of order
            report.bad.append(BadLine(ex.file, ex.line, f"the chat template refused it: {exc}"))
            continue
        if len(t.input_ids) > seq_len:
            report.bad.append(BadLine(ex.file, ex.line, f"{len(t.input_ids):,} tokens, longer than "
                                      f"finetune.seq_len={seq_len:,}"))
            continue
        if t.n_loss_tokens == 0:
            report.bad.append(BadLine(ex.file, ex.line, "no assistant token after tokenization"))
            continue
        out.append(t)
    return out


# ------------------------------------------------------------------ sequences


@dataclass
class Sequence:
    """What the model sees in one row: one example, or several packed ones
    (``segments`` holds their lengths, so attention stays within each)."""

    input_ids: list[int]
    labels: list[int]
    segments: list[int]


def pack(examples: list[Tokenized], seq_len: int) -> list[Sequence]:
    """Greedy packing in order: an example starts a new sequence when it does not fit."""
    out: list[Sequence] = []
    cur = Sequence([], [], [])
    for t in examples:
        if cur.input_ids and len(cur.input_ids) + len(t.input_ids) > seq_len:
            out.append(cur)
            cur = Sequence([], [], [])
        cur.input_ids += t.input_ids
        cur.labels += t.labels
        cur.segments.append(len(t.input_ids))
    if cur.input_ids:
        out.append(cur)
    return out


def unpacked(examples: list[Tokenized]) -> list[Sequence]:
    return [Sequence(list(t.input_ids), list(t.labels), [len(t.input_ids)]) for t in examples]


def collate(seqs: list[Sequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` (IGNORE on padding) and an attention
    mask: 2-D (1 = token) when no row is packed, else a 4-D boolean mask (True:
    may attend) that is causal within each packed example and blocks everything
    else, with position ids restarting at each example (``as_model_mask`` turns it
    into what the model's attention takes)."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[i, : len(s.labels)] = torch.tensor(s.labels)
    if all(len(s.segments) == 1 for s in seqs):
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            mask[i, : len(s.input_ids)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    allowed = torch.zeros((len(seqs), 1, width, width), dtype=torch.bool)
    positions = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        start = 0
        for n in s.segments:
            allowed[i, 0, start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            positions[i, start:start + n] = torch.arange(n)
            start += n
        allowed[i, 0, start:, :] = torch.eye(width, dtype=torch.bool)[start:]  # padding sees itself
    return {"input_ids": ids, "labels": labels, "attention_mask": allowed, "position_ids": positions}


def as_model_mask(batch: dict[str, torch.Tensor], attn_implementation: str | None,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A packed batch's boolean 4-D mask as the attention implementation takes it:
    boolean for SDPA, additive (0 / most negative) for eager attention."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 4 or attn_implementation == "sdpa":
        return batch
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return {**batch, "attention_mask": additive}


class ExampleLoader:
    """Batches of sequences as a pure function of (seed, step, micro-step): sample
    ``g`` of the run is position ``g mod N`` of epoch ``g div N``'s seeded
    permutation, so a resumed run needs no loader state (as the pretraining loader)."""

    def __init__(self, seqs: list[Sequence], micro_batch: int, grad_accum: int, seed: int, pad_id: int):
        if not seqs:
            raise DataError("no training example is left after the bad lines were removed")
        self.seqs, self.micro_batch, self.grad_accum = seqs, micro_batch, grad_accum
        self.seed, self.pad_id = seed, pad_id
        self.global_batch = micro_batch * grad_accum
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    @property
    def n_sequences(self) -> int:
        return len(self.seqs)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))
            self._epoch = epoch
        return self._order

    def steps_for(self, epochs: float) -> int:
        return max(1, int(np.ceil(epochs * len(self.seqs) / self.global_batch)))

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / len(self.seqs)

    def micro_batch_seqs(self, step: int, micro: int) -> list[Sequence]:
        first = (step * self.grad_accum + micro) * self.micro_batch
        out = []
        for g in range(first, first + self.micro_batch):
            epoch, pos = divmod(g, len(self.seqs))
            out.append(self.seqs[int(self.order(epoch)[pos])])
        return out

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        return collate(self.micro_batch_seqs(step, micro), self.pad_id)


def split_validation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded share of the examples held out (at least one when ``fraction`` > 0
    and there are two or more)."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    n_val = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    order = np.random.default_rng([seed, 7]).permutation(len(examples))
    held = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def pad_id_of(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0
