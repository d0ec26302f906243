"""Stop strings that straddle two multi-character tokens, and what a stream sends while
a tail of the text might still begin a stop string (issue 32, inference/engine.py's
surviving mutants).

The reference is the OpenAI completions contract: the text returned ends just before the
first occurrence of any stop string, finish_reason "stop"; a stream sends everything that
cannot be the start of a stop string as soon as it is generated. The texts compared are
the tokenizer's own decode of the scripted ids, cut with ``str.index`` by hand.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fmforge.inference.engine import Engine, GenerationRequest

TEXT = "the quick brown fox jumps over the lazy dog"


class Scripted(Engine):
    """An engine whose 'model' emits a fixed id sequence (the model still runs):
    the token boundaries are then known exactly."""

    def __init__(self, trained, script: list[int]):
        super().__init__(trained)
        self.script = script

    def _sample(self, seqs, logits):
        for seq in seqs:
            seq.accept(self.script[seq.n_generated])


def _script(tokenizer) -> tuple[list[int], list[str]]:
    """TEXT's ids under the test tokenizer and each id's own text (whole ASCII
    characters, so they join to TEXT)."""
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    pieces = [tokenizer.decode([i]) for i in ids]
    assert tokenizer.decode(ids) == "".join(pieces) == TEXT
    return ids, pieces


def _boundary(pieces: list[str]) -> int:
    """The first i where token i has 3+ characters, token i+1 has 2+, and token i's
    last character ends no other token (with the tokenizer trained in conftest:
    "ick" | " b")."""
    lasts = [p[-1] for p in pieces]
    for i in range(len(pieces) - 2):
        if len(pieces[i]) >= 3 and len(pieces[i + 1]) >= 2 and lasts.count(lasts[i]) == 1:
            return i
    pytest.fail(f"no usable token boundary in {pieces}")


def _request(n: int, stop: list[str]) -> GenerationRequest:
    return GenerationRequest(prompt="hi", max_new_tokens=n, temperature=0, stop=stop,
                             stop_token_ids=[])


@pytest.mark.parametrize("left", [1, 2])
def test_a_stop_string_split_across_two_long_tokens_stops_the_text(trained, left):
    # "k b" (1 + 2 characters) and "ck b" (2 + 2): the stop string begins inside a
    # 3-character token, so while that token is the newest, only part of it may be sent.
    ids, pieces = _script(trained.tokenizer)
    i = _boundary(pieces)
    stop = pieces[i][-left:] + pieces[i + 1][:2]
    cut = TEXT.index(stop)
    assert cut == len("".join(pieces[: i + 1])) - left, "the stop first occurs at the boundary"

    [res] = Scripted(trained, ids).generate([_request(len(ids), ["never-appears", stop])])
    assert (res.text, res.finish_reason) == (TEXT[:cut], "stop")
    # The ids that spelled the stop string are kept; every generated token is counted.
    assert res.token_ids == ids[: i + 2] and res.completion_tokens == i + 2

    streamed = list(Scripted(trained, ids).stream(_request(len(ids), [stop])))
    assert "".join(streamed) == TEXT[:cut] and all(streamed)


def test_a_stream_holds_back_only_the_character_that_may_begin_a_stop_string(trained):
    # The stop string begins with token i's last character and never occurs: that
    # character alone waits for the next token; the rest of token i is sent with it.
    ids, pieces = _script(trained.tokenizer)
    i = _boundary(pieces)
    stop = pieces[i][-1] + "\x00"
    expected = pieces[:i] + [pieces[i][:-1], pieces[i][-1] + pieces[i + 1]] + pieces[i + 2:]

    assert list(Scripted(trained, ids).stream(_request(len(ids), [stop]))) == expected

    # The step-level API (a server's loop) gives each step's piece as a str, the same pieces.
    engine = Scripted(trained, ids)
    engine.add(_request(len(ids), [stop]))
    outputs = []
    while engine.has_work():
        outputs += engine.step()
    assert all(isinstance(out.text, str) for out in outputs)
    assert [out.text for out in outputs] == expected
    assert outputs[-1].result.text == TEXT and outputs[-1].finish_reason == "length"


def greedy_by_recomputation(model, prompt_ids: list[int], n: int) -> list[int]:
    """The reference: the whole context through the model's own ``forward`` for every
    token, no cache."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids):]


def test_greedy_text_is_the_models_own_when_the_context_matters(trained, make_model):
    # conftest's model (init_std 0.1) picks its next token almost from the last token
    # alone, so a prompt stored at the wrong positions (its last token then overwritten
    # by the first new one) still gave the same greedy ids. At init_std 0.3 every
    # earlier token counts.
    model = make_model(trained.tokenizer.get_vocab_size(), init_std=0.3)
    sharp = dataclasses.replace(trained, model=model)
    prompts = ["def alpha(beta", "the quick", "x", "café crème"]
    ids = [trained.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    expected = [greedy_by_recomputation(model, i, 20) for i in ids]
    requests = [GenerationRequest(prompt_ids=i, max_new_tokens=20, temperature=0, stop_token_ids=[])
                for i in ids]
    alone = [Engine(sharp, max_batch=1).generate([r])[0].token_ids for r in requests]
    together = [r.token_ids for r in Engine(sharp, max_batch=4).generate(requests)]
    assert alone == expected
    assert together == expected


@pytest.mark.parametrize("max_batch, batch", [(1, 1), (16, 1), (3, 3)])
def test_a_fresh_engines_cache_holds_what_its_first_requests_need(trained, max_batch, batch):
    # Hand count for conftest's model: keys and values (2) x 2 layers x rows x 2 kv heads
    # x (3 prompt + 5 new) positions x head_dim 32/4 = 8 x 4 bytes (float32).
    engine = Engine(trained, max_batch=max_batch)
    engine.generate([GenerationRequest(prompt_ids=[5 + i] * 3, max_new_tokens=5, temperature=0,
                                       stop_token_ids=[]) for i in range(batch)])
    held = sum(t.numel() * t.element_size() for t in engine.cache.k + engine.cache.v)
    assert held == 2 * 2 * batch * 2 * 8 * 8 * 4
