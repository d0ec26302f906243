"""The engine's promises, each from its docstring, checked from outside: the cache's
bound, the whole context usable, an empty prompt starting at end-of-text, refused
requests leaving nothing behind, cancelling a waiting request, the step outputs'
shape, stop tokens and stop strings at their edges, and streamed text never lost."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fmforge.inference.decode import forward_cached
from fmforge.inference.engine import Engine, GenerationRequest, RequestError
from fmforge.inference.kv_cache import KVCache


def greedy(n: int, prompt: str | None = None, ids: list[int] | None = None, **kw) -> GenerationRequest:
    kw.setdefault("stop_token_ids", [])
    return GenerationRequest(prompt=prompt, prompt_ids=ids, max_new_tokens=n, temperature=0, **kw)


def run(engine: Engine) -> tuple[dict[int, list], list[list]]:
    """Drive add/step to the end: each sequence's StepOutputs, and each step's outputs."""
    outs: dict[int, list] = {}
    steps = []
    while engine.has_work():
        step = engine.step()
        steps.append(step)
        assert len(engine.running) <= engine.max_batch
        for out in step:
            outs.setdefault(out.seq_id, []).append(out)
    return outs, steps


def test_the_cache_grows_to_what_is_in_flight_and_no_further_than_max_batch_rows_of_the_context(trained):
    context = trained.model.cfg.seq_len  # 96
    engine = Engine(trained, max_batch=3)
    for batch, prompt, n in [(1, 3, 5), (2, 3, 5), (3, 3, 5), (1, 55, 5), (1, 65, 5), (2, 80, 16)]:
        results = engine.generate([greedy(n, ids=[5 + i] * prompt) for i in range(batch)])
        assert [len(r.token_ids) for r in results] == [n] * batch
        assert batch <= engine.cache.rows <= 3
        assert prompt + n <= engine.cache.length <= context


def test_the_whole_context_can_be_generated_into(trained):
    context = trained.model.cfg.seq_len
    engine = Engine(trained)
    [res] = engine.generate([greedy(context - 1, ids=[5])])
    assert len(res.token_ids) == context - 1 and res.finish_reason == "length"
    assert res.prompt_tokens == 1 and res.completion_tokens == context - 1
    with pytest.raises(RequestError, match=f"ask for at most {context - 1}"):
        engine.generate([greedy(context, ids=[5])])
    # a prompt of exactly what max_new_tokens leaves is accepted; one more token is not
    assert engine.generate([greedy(10, ids=[6] * (context - 10))])[0].prompt_tokens == context - 10
    with pytest.raises(RequestError, match=f"leaves room for {context - 10}"):
        engine.generate([greedy(10, ids=[6] * (context - 9))])
    [cut] = engine.generate([greedy(10, ids=list(range(3, 3 + context)), truncate="left")])
    assert cut.prompt_tokens == context - 10
    assert cut.token_ids == engine.generate([greedy(10, ids=list(range(13, 3 + context)))])[0].token_ids


def test_an_empty_prompt_starts_from_end_of_text(trained):
    engine = Engine(trained)
    [empty] = engine.generate([greedy(8, prompt="")])
    [eos] = engine.generate([greedy(8, ids=[trained.eos_id])])
    assert empty.token_ids == eos.token_ids and empty.prompt_tokens == 0 and eos.prompt_tokens == 1
    # a model without an end-of-text token starts from id 0, and nothing stops it early
    no_eos = Engine(dataclasses.replace(trained, eos_id=None))
    [empty] = no_eos.generate([GenerationRequest(prompt="", max_new_tokens=8, temperature=0)])
    [zero] = no_eos.generate([greedy(8, ids=[0])])
    assert empty.token_ids == zero.token_ids and len(empty.token_ids) == 8


def test_the_end_of_text_id_stops_unless_other_stop_ids_are_given(trained):
    engine = Engine(trained)
    free = engine.generate([greedy(30, prompt="def")])[0].token_ids
    stop_at = free[4]
    as_eos = Engine(dataclasses.replace(trained, eos_id=stop_at))
    [by_default] = as_eos.generate([GenerationRequest(prompt="def", max_new_tokens=30, temperature=0)])
    assert by_default.token_ids == free[:free.index(stop_at)] and by_default.finish_reason == "stop"
    [none] = as_eos.generate([greedy(30, prompt="def")])  # stop_token_ids=[]: nothing stops it
    assert none.token_ids == free and none.finish_reason == "length"


def test_a_refused_request_among_several_leaves_nothing_behind(trained):
    engine = Engine(trained)
    context = trained.model.cfg.seq_len
    with pytest.raises(RequestError):
        engine.generate([greedy(5, prompt="def"), greedy(5, ids=[1] * context)])
    assert not engine.has_work() and not engine.waiting
    [after] = engine.generate([greedy(5, prompt="the")])
    assert after.token_ids == Engine(trained).generate([greedy(5, prompt="the")])[0].token_ids


def test_cancelling_a_waiting_request_and_an_unknown_one(trained):
    engine = Engine(trained, max_batch=1)
    a = engine.add(greedy(4, prompt="def"))
    b = engine.add(greedy(4, prompt="the"))
    c = engine.add(greedy(3, prompt="x"))
    first = engine.step()
    assert [o.seq_id for o in first] == [a]  # one row: b and c wait
    assert engine.cancel(b) is True and engine.cancel(b) is False
    assert engine.cancel(12345) is False
    outs, _ = run(engine)
    assert set(outs) == {a, c}
    assert outs[c][-1].result.token_ids == Engine(trained).generate([greedy(3, prompt="x")])[0].token_ids


def test_each_step_gives_one_output_per_sequence_and_the_result_on_the_last(trained):
    engine = Engine(trained, max_batch=4)
    want = {p: Engine(trained).generate([greedy(n, prompt=p)])[0] for p, n in [("def", 5), ("the", 3)]}
    ids = {engine.add(greedy(5, prompt="def")): "def", engine.add(greedy(3, prompt="the")): "the"}
    zero = engine.add(greedy(0, prompt="x"))
    outs, steps = run(engine)
    assert len(steps) == 5
    assert all(len({o.seq_id for o in s}) == len(s) for s in steps)
    for seq_id, prompt in ids.items():
        seq = outs[seq_id]
        assert [o.finished for o in seq] == [False] * (len(seq) - 1) + [True]
        assert all(o.result is None and o.finish_reason is None for o in seq[:-1])
        last = seq[-1]
        assert last.finish_reason == "length" == last.result.finish_reason
        assert "".join(o.text for o in seq) == last.result.text == want[prompt].text
        assert last.result.token_ids == want[prompt].token_ids
    [z] = outs[zero]
    assert (z.text, z.finished, z.finish_reason) == ("", True, "length")
    assert (z.result.text, z.result.token_ids, z.result.completion_tokens) == ("", [], 0)
    assert z.result.prompt_tokens == 1  # "x"


def sampled(n: int, prompt: str, seed: int, **kw) -> GenerationRequest:
    """A seeded draw: varied text from the random model (its greedy text repeats one token)."""
    kw.setdefault("stop_token_ids", [])
    return GenerationRequest(prompt=prompt, max_new_tokens=n, temperature=1.0, seed=seed, **kw)


def test_a_stop_token_as_the_last_allowed_token_is_a_stop(engine):
    free = engine.generate([sampled(12, "def", seed=0)])[0].token_ids
    n = next(i for i in range(4, 12) if free[i] not in free[:i]) + 1  # a token's first appearance
    [res] = engine.generate([sampled(n, "def", seed=0, stop_token_ids=[free[n - 1]])])
    assert res.finish_reason == "stop" and res.token_ids == free[: n - 1]
    assert res.completion_tokens == n
    [one_more] = engine.generate([sampled(n - 1, "def", seed=0, stop_token_ids=[free[n - 1]])])
    assert one_more.finish_reason == "length" and one_more.token_ids == free[: n - 1]


def _first_clean(text: str, lo: int, hi: int) -> int:
    """The first i in [lo, hi) where text[i:i + 2] has no replacement character and first
    occurs at i."""
    return next(i for i in range(lo, hi) if "\ufffd" not in text[i:i + 2] and text.index(text[i:i + 2]) == i)


def test_the_earliest_of_several_stop_strings_cuts_the_text(engine):
    text = engine.generate([sampled(30, "def", seed=0)])[0].text
    early, late = _first_clean(text, 3, 10), _first_clean(text, 14, len(text) - 2)
    [res] = engine.generate([sampled(30, "def", 0, stop=[text[late:late + 2], text[early:early + 2]])])
    assert res.text == text[:early] and res.finish_reason == "stop"


def test_a_completion_that_begins_with_a_stop_string_is_empty(engine):
    for seed in range(10):  # a seed whose completion's first two characters are clean
        text = engine.generate([sampled(20, "def", seed)])[0].text
        if "\ufffd" not in text[:2]:
            break
    [res] = engine.generate([sampled(20, "def", seed, stop=["never-appears", text[:2]])])
    assert (res.text, res.finish_reason) == ("", "stop")
    assert "".join(engine.stream(sampled(20, "def", seed, stop=[text[:2]]))) == ""


def test_text_held_back_for_a_stop_string_that_never_completes_is_sent(engine):
    # The stop string begins like a piece of the text but never occurs: what was held
    # back while it might have matched is sent; the stream loses nothing, sends no
    # empty piece, and ends as the completion does.
    text = engine.generate([sampled(30, "def", seed=0)])[0].text
    for i in (_first_clean(text, 2, 10), _first_clean(text, 10, 20), len(text) - 2):
        pieces = list(engine.stream(sampled(30, "def", 0, stop=[text[i:i + 2] + "\x00"])))
        assert "".join(pieces) == text and all(pieces), i


def test_a_stream_closed_early_leaves_the_engine_empty(engine):
    stream = engine.stream(greedy(30, prompt="def"))
    next(stream)
    stream.close()
    assert not engine.has_work()


def test_positions_past_the_cache_are_refused(make_model):
    model = make_model(50)
    cache = KVCache(model.cfg, 1, 8, torch.device("cpu"), torch.float32)
    forward_cached(model, torch.tensor([[3] * 8]), cache, [0], [0])  # fills positions 0..7
    with pytest.raises(ValueError, match="positions up to 9 exceed the cache's 8"):
        forward_cached(model, torch.tensor([[4]]), cache, [0], [8])
    cache2 = KVCache(model.cfg, 1, 9, torch.device("cpu"), torch.float32)
    forward_cached(model, torch.tensor([[3] * 8]), cache2, [0], [0])
    last = forward_cached(model, torch.tensor([[4]]), cache2, [0], [8])  # the last slot is usable
    full = model(torch.tensor([[3] * 8 + [4]]))[0, -1]
    assert torch.allclose(last[0], full, atol=1e-5)
