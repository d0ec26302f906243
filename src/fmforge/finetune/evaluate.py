"""Held-out evaluation of a fine-tuned model: assistant-token loss and greedy accuracy.

``assistant_loss``: mean nats per assistant (completion) token over held-out
examples, exactly the quantity fine-tuning minimises (prompt tokens carry none).
``greedy_accuracy``: for each example, the conversation up to its last
assistant turn is rendered with the generation prompt, the model continues it
greedily, and the answer counts as right when it equals the reference reply
(surrounding white space ignored).

Works on a base model, a base with a peft adapter, or a merged model: anything
with the ``transformers`` causal-LM forward.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from fmforge.errors import InputFileMissing
from fmforge.finetune.data import IGNORE, Example, Sequence, as_model_mask, bos_ids, collate, pad_id_of


def shifted_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Targets aligned with the logits: position t predicts the label of t + 1.
    A batch of token windows carries its ``targets`` already."""
    if "targets" in batch:
        return batch["targets"]
    labels = batch["labels"]
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)


def _attn_impl(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def loss_sum(model, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the target tokens, their count) of one batch."""
    targets = shifted_targets(batch).to(device)
    batch = as_model_mask(batch, _attn_impl(model))
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                           reduction="sum")
    return loss, int((targets != IGNORE).sum())


@dataclass
class HeldOut:
    loss: float  # mean nats per assistant token
    tokens: int
    examples: int
    accuracy: float | None = None  # greedy exact match, when measured
    answered: int | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["perplexity"] = math.exp(self.loss) if self.loss < 50 else None
        return out


@torch.no_grad()
def loss_over(model, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
              amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> tuple[float, int]:
    """Mean loss per target token over ``batches``, and the token count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            with amp():
                s, n = loss_sum(model, batch, device)
            total += float(s)
            count += n
    finally:
        model.train(was_training)
    return (total / count if count else float("nan")), count


def sequence_batches(seqs: list[Sequence], batch_size: int, pad_id: int):
    for i in range(0, len(seqs), batch_size):
        yield collate(seqs[i:i + batch_size], pad_id)


def _prompt_and_answer(tokenizer, ex: Example) -> tuple[str, str]:
    if ex.messages is None:
        return ex.prompt, ex.completion
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(ex.messages[:last], tokenize=False, add_generation_prompt=True)
    return prompt, ex.messages[last]["content"]


@torch.no_grad()
def greedy_answers(model, tokenizer, examples: list[Example], device: torch.device,
                   max_new_tokens: int = 64) -> list[tuple[str, str]]:
    """(generated, reference) for each example, decoded greedily until EOS."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for ex in examples:
            prompt, reference = _prompt_and_answer(tokenizer, ex)
            ids = tokenizer(prompt, add_special_tokens=ex.messages is None, return_tensors="pt")["input_ids"]
            if ex.messages is not None and tokenizer.bos_token_id is not None:
                bos = bos_ids(tokenizer)
                if bos and ids[0, 0].item() != bos[0]:
                    ids = torch.cat([torch.tensor([bos]), ids], dim=1)
            ids = ids.to(device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=pad_id_of(tokenizer))
            text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append((text, reference))
    finally:
        model.train(was_training)
    return out


def evaluate_examples(model, tokenizer, seqs: list[Sequence], examples: list[Example],
                      device: torch.device, batch_size: int = 8, accuracy: bool = True,
                      max_new_tokens: int = 64) -> HeldOut:
    loss, tokens = loss_over(model, sequence_batches(seqs, batch_size, pad_id_of(tokenizer)), device)
    result = HeldOut(loss=loss, tokens=tokens, examples=len(seqs))
    if accuracy and examples:
        pairs = greedy_answers(model, tokenizer, examples, device, max_new_tokens)
        right = sum(1 for got, want in pairs if got.strip() == want.strip())
        result.accuracy, result.answered = right / len(pairs), len(pairs)
    return result


def evaluate_model(model_path: str | Path, data: str | Path, base: str | Path | None = None,
                   device: str = "auto", accuracy: bool = True, max_new_tokens: int = 64,
                   seq_len: int | None = None) -> dict:
    """``fmforge finetune eval``: a model or adapter directory on held-out JSONL
    examples, rendered with the template the directory's tokenizer carries
    (fmforge's when it has none). Bad lines are reported, not scored."""
    from fmforge.finetune.data import ensure_chat_template, read_examples, tokenize_examples, unpacked
    from fmforge.finetune.merge import load_model, load_tokenizer
    from fmforge.train.device import pick_device

    if not Path(data).is_file():  # before a model loads
        raise InputFileMissing(f"{data} does not exist: give a held-out JSONL file of chat or "
                               "prompt/completion examples")
    dev = pick_device(device)
    tokenizer = load_tokenizer(model_path)
    template = ensure_chat_template(tokenizer, "auto")
    model = load_model(model_path, dev, base)
    examples, report = read_examples(Path(data))
    limit = seq_len or getattr(model.config, "max_position_embeddings", None) or 1 << 30
    tokenized = tokenize_examples(tokenizer, examples, limit, report)
    bad = {(b.file, b.line) for b in report.bad}
    kept = [ex for ex in examples if (ex.file, ex.line) not in bad]
    result = evaluate_examples(model, tokenizer, unpacked(tokenized), kept, dev, accuracy=accuracy,
                               max_new_tokens=max_new_tokens)
    return {"model": str(model_path), "data": str(data), "template": template, **result.to_dict(),
            "bad_lines": [str(b) for b in report.bad]}
