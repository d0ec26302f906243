"""Chat / prompt-completion data: the loss mask, bad lines, packing, batch order."""

from __future__ import annotations

import torch

from fmforge.finetune.data import (
    IGNORE,
    FMFORGE_CHAT_TEMPLATE,
    Example,
    ExampleLoader,
    ReadReport,
    as_model_mask,
    check_bad_fraction,
    collate,
    ensure_chat_template,
    pack,
    read_examples,
    tokenize_example,
    tokenize_examples,
    unpacked,
)
import pytest


@pytest.fixture(scope="module")
def tok(tmp_path_factory, ft):
    t = ft.make_tokenizer(tmp_path_factory.mktemp("tok"))
    ensure_chat_template(t, "auto")
    return t


def test_prompt_tokens_carry_no_loss(tok):
    ex = Example("x.jsonl", 1, messages=[{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "reverse red blue green"},
                                         {"role": "assistant", "content": "green blue red"},
                                         {"role": "user", "content": "reverse cat dog"},
                                         {"role": "assistant", "content": "dog cat"}])
    t = tokenize_example(tok, ex)
    # The whole conversation, token by token, as a person reads it.
    assert tok.convert_ids_to_tokens(t.input_ids) == [
        "<|system|>", "<unk>", "<unk>", "<|user|>", "reverse", "red", "blue", "green",
        "<|assistant|>", "green", "blue", "red", "<|endoftext|>",
        "<|user|>", "reverse", "cat", "dog", "<|assistant|>", "dog", "cat", "<|endoftext|>"]
    learned = [tok.convert_ids_to_tokens(i) for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE]
    # Only the two replies and their end-of-turn tokens (the system words are unknown: <unk>).
    assert learned == ["green", "blue", "red", "<|endoftext|>", "dog", "cat", "<|endoftext|>"]
    assert all(lab in (IGNORE, i) for i, lab in zip(t.input_ids, t.labels))


def test_prompt_completion_masks_the_prompt(tok):
    t = tokenize_example(tok, Example("x", 1, prompt="reverse red blue please", completion=" blue red"))
    assert [lab for lab in t.labels[:4]] == [IGNORE] * 4
    assert tok.convert_ids_to_tokens([lab for lab in t.labels if lab != IGNORE]) == ["blue", "red", "<|endoftext|>"]


def test_fmforge_template_matches_the_servers_prompt(tok):
    from fmforge.serve.chat_template import ChatFormatter, simple_prompt

    msgs = [{"role": "user", "content": "reverse red blue"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == simple_prompt(msgs)
    assert ChatFormatter(FMFORGE_CHAT_TEMPLATE, {"eos_token": "<|endoftext|>"}).prompt(msgs) == rendered


def test_bad_lines_reported_with_file_and_line_and_counted(tmp_path, tok, ft):
    path = ft.write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [{"role": "user", "content": "reverse red"}, {"role": "assistant", "content": "red"}]},
        '{"messages": [ not json',
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "red"}]},
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": "reverse red"}]},
        {"prompt": "reverse", "completion": " " + " ".join(["red"] * 80)},
        {"prompt": "reverse red", "completion": " red"},
    ])
    examples, report = read_examples(path)
    tokenized = tokenize_examples(tok, examples, 64, report)
    assert report.lines == 8 and len(tokenized) == 2
    got = {(b.line, b.reason.split(" (")[0].split(",")[0]) for b in report.bad}
    assert {line for line, _ in got} == {2, 3, 4, 5, 6, 7}
    reasons = {b.line: b.reason for b in report.bad}
    assert reasons[2].startswith("not JSON")
    assert "unknown role 'robot'" in reasons[3]
    assert "has no 'role'" in reasons[4]
    assert "empty content" in reasons[5]
    assert "no assistant message" in reasons[6]
    assert "longer than finetune.seq_len=64" in reasons[7]
    assert all(b.file == str(path) for b in report.bad)
    with pytest.raises(ValueError, match=r"(?s)6 of 8 lines are bad .*mixed.jsonl:2: not JSON"):
        check_bad_fraction(report, 0.5)
    check_bad_fraction(report, 0.75)  # at or below the threshold: skipped, the run goes on


def test_packed_examples_do_not_see_each_other(tiny_base, tok):
    """Two examples packed into one row give the logits each gives alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), local_files_only=True).eval()
    exs = [tokenize_example(tok, Example("x", i, prompt=p, completion=c))
           for i, (p, c) in enumerate([("reverse red blue", " blue red"), ("reverse cat dog fish", " fish")])]
    packed = pack(exs, 64)
    assert len(packed) == 1 and packed[0].segments == [len(exs[0].input_ids), len(exs[1].input_ids)]
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl
        batch = as_model_mask(collate(packed, 0), impl)
        with torch.no_grad():
            together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"]).logits[0]
            start = 0
            for ex in exs:
                alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
                n = len(ex.input_ids)
                assert torch.allclose(together[start:start + n], alone, atol=1e-5), impl
                start += n


def test_batches_are_a_function_of_seed_and_step(tok):
    exs = [tokenize_example(tok, Example("x", i, prompt="reverse " + w, completion=" " + w))
           for i, w in enumerate(["red", "blue", "green", "cat", "dog"])]
    a = ExampleLoader(unpacked(exs), 2, 2, seed=3, pad_id=1)
    b = ExampleLoader(unpacked(exs), 2, 2, seed=3, pad_id=1)
    for step in (7, 0, 3):  # any order: no loader state
        for micro in (1, 0):
            assert torch.equal(a.batch(step, micro)["input_ids"], b.batch(step, micro)["input_ids"])
    # one epoch sees every example once
    first_epoch = [s.input_ids for st in range(2) for m in range(2) for s in a.micro_batch_seqs(st, m)][:5]
    assert sorted(map(tuple, first_epoch)) == sorted(tuple(e.input_ids) for e in exs)
    assert a.steps_for(2.0) == 3
    r = ReadReport(lines=0)
    with pytest.raises(ValueError, match="no examples"):
        check_bad_fraction(r, 0.1)
