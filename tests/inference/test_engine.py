"""The engine: batching, sampling, stops, context limits, and the step-level API."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.sampling import filter_logits

PROMPTS = ["def", "the quick brown fox jumps", "café crème", "x", "def alpha(beta, gamma):\n    return"]


def greedy(prompt: str, n: int = 20, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=n, temperature=0, stop_token_ids=[], **kw)


def sampled(prompt: str, seed: int, n: int = 20, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=n, temperature=1.0, seed=seed,
                             stop_token_ids=[], **kw)


def test_batched_equals_one_by_one(trained):
    """Prompts of different lengths together give what each gives alone, greedy
    and seeded sampling alike (each request has its own generator)."""
    requests = [greedy(p, n=10 + 3 * i) for i, p in enumerate(PROMPTS)]
    requests += [sampled(p, seed=i, top_k=40, top_p=0.9) for i, p in enumerate(PROMPTS)]
    together = Engine(trained, max_batch=16).generate(requests)
    alone = [Engine(trained, max_batch=1).generate([r])[0] for r in requests]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [len(r.token_ids) for r in together[:5]] == [10, 13, 16, 19, 22]


def test_more_requests_than_rows_wait_their_turn(trained):
    requests = [greedy(p, n=8) for p in PROMPTS * 2]
    small = Engine(trained, max_batch=3).generate(requests)
    big = Engine(trained, max_batch=16).generate(requests)
    assert [r.token_ids for r in small] == [r.token_ids for r in big]


def test_continuous_batching_add_step_cancel(trained):
    """Sequences join and leave between steps; each still gets its solo result."""
    solo = {p: Engine(trained).generate([greedy(p, n=12)])[0] for p in PROMPTS[:3]}
    engine = Engine(trained, max_batch=4)
    a = engine.add(greedy(PROMPTS[0], n=12))
    texts: dict[int, str] = {}
    results = {}

    def run_step():
        for out in engine.step():
            texts[out.seq_id] = texts.get(out.seq_id, "") + out.text
            if out.finished:
                results[out.seq_id] = out.result

    for _ in range(4):
        run_step()
    b = engine.add(greedy(PROMPTS[1], n=12))
    doomed = engine.add(greedy(PROMPTS[2], n=12))
    run_step()
    assert engine.cancel(doomed) and not engine.cancel(doomed)
    c = engine.add(greedy(PROMPTS[2], n=12))  # takes the freed row
    while engine.has_work():
        run_step()
    assert doomed not in results
    for seq_id, prompt in ((a, PROMPTS[0]), (b, PROMPTS[1]), (c, PROMPTS[2])):
        assert results[seq_id].token_ids == solo[prompt].token_ids
        assert results[seq_id].text == texts[seq_id] == solo[prompt].text


def test_seeded_sampling_is_reproducible(engine):
    one = engine.generate([sampled("def", seed=5, n=30)])[0]
    again = engine.generate([sampled("def", seed=5, n=30)])[0]
    other = engine.generate([sampled("def", seed=6, n=30)])[0]
    assert one.token_ids == again.token_ids
    assert one.token_ids != other.token_ids
    unseeded = [engine.generate([GenerationRequest(prompt="def", max_new_tokens=30,
                                                   stop_token_ids=[])])[0].token_ids for _ in range(2)]
    assert unseeded[0] != unseeded[1], "without a seed, each request draws afresh"


def test_top_k_1_and_tiny_top_p_are_greedy(engine):
    want = engine.generate([greedy("the quick", n=15)])[0].token_ids
    assert engine.generate([sampled("the quick", seed=1, n=15, top_k=1)])[0].token_ids == want
    assert engine.generate([sampled("the quick", seed=1, n=15, top_p=1e-6)])[0].token_ids == want


def test_filter_logits():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2, top_p=None)) == [0, 1]
    assert kept(filter_logits(logits, top_k=None, top_p=0.5)) == [0]
    assert kept(filter_logits(logits, top_k=None, top_p=0.6)) == [0, 1]
    assert kept(filter_logits(logits, top_k=None, top_p=0.95)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_k=3, top_p=1.0)) == [0, 1, 2]
    assert kept(filter_logits(logits.flip(0), top_k=None, top_p=0.6)) == [2, 3]


def _stop_string_case(engine):
    """A prompt, its greedy text and a stop string from the middle of that text,
    free of replacement characters and first seen past the text's start. The
    first prompt that has one: a random model's greedy text may repeat a partial
    UTF-8 byte throughout, and which prompt does depends on its weights."""
    for prompt in PROMPTS:
        full = engine.generate([greedy(prompt, n=40)])[0]
        text = full.text
        for i in range(5, len(text) - 3):
            stop = text[i:i + 3]
            if "\ufffd" not in stop and text.index(stop) > 0:
                return prompt, full, stop
    pytest.fail("no prompt's greedy text has a clean stop string")


def test_stop_strings(engine):
    prompt, full, stop = _stop_string_case(engine)
    text = full.text
    cut = text.index(stop)
    [res] = engine.generate([greedy(prompt, n=40, stop=["never-appears", stop])])
    assert res.text == text[:cut] and res.finish_reason == "stop"
    assert full.token_ids[: len(res.token_ids)] == res.token_ids
    assert len(res.token_ids) < 40
    # Streamed, the pieces never show the stop string (nor a start of it).
    pieces = list(engine.stream(greedy(prompt, n=40, stop=[stop])))
    assert "".join(pieces) == text[:cut]


def test_stop_token_ids_and_eos_by_default(engine, trained):
    full = engine.generate([greedy("def", n=30)])[0]
    stop_id = full.token_ids[7]
    first = full.token_ids.index(stop_id)
    [res] = engine.generate([GenerationRequest(prompt="def", max_new_tokens=30, temperature=0,
                                               stop_token_ids=[stop_id])])
    assert res.token_ids == full.token_ids[:first] and res.finish_reason == "stop"
    assert res.completion_tokens == first + 1, "the stop token was generated, so it is counted"
    assert res.text == trained.tokenizer.decode(full.token_ids[:first])
    # Without stop_token_ids, the model's end-of-text id stops generation.
    as_eos = dataclasses.replace(trained, eos_id=stop_id)
    [res] = Engine(as_eos).generate([GenerationRequest(prompt="def", max_new_tokens=30, temperature=0)])
    assert res.token_ids == full.token_ids[:first] and res.finish_reason == "stop"


def test_too_long_prompt_refused_or_truncated_left(engine, trained):
    ctx = trained.model.cfg.seq_len  # 96
    ids = list(range(5, 5 + 90))
    with pytest.raises(ValueError) as err:
        engine.generate([GenerationRequest(prompt_ids=ids, max_new_tokens=10, temperature=0)])
    message = str(err.value)
    assert "90 tokens" in message and "96" in message and "max_new_tokens=10" in message
    assert "truncate='left'" in message
    assert not engine.has_work(), "a refused request leaves nothing behind"
    [res] = engine.generate([GenerationRequest(prompt_ids=ids, max_new_tokens=10, temperature=0,
                                               truncate="left", stop_token_ids=[])])
    [same] = engine.generate([GenerationRequest(prompt_ids=ids[-(ctx - 10):], max_new_tokens=10,
                                                temperature=0, stop_token_ids=[])])
    assert res.prompt_tokens == ctx - 10 and res.token_ids == same.token_ids
    assert len(res.token_ids) == 10
    # A prompt that exactly fits is accepted, and generation may fill the context.
    [full] = engine.generate([GenerationRequest(prompt_ids=ids[:86], max_new_tokens=10,
                                                temperature=0, stop_token_ids=[])])
    assert len(full.token_ids) == 10
    with pytest.raises(ValueError, match="leaves no room"):
        engine.add(GenerationRequest(prompt="x", max_new_tokens=96))


def test_invalid_requests_are_refused():
    for kw, word in [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                     ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                     ({"max_new_tokens": -1}, "max_new_tokens"), ({"stop": [""]}, "stop"),
                     ({"truncate": "right"}, "truncate")]:
        with pytest.raises(ValueError, match=word):
            GenerationRequest(prompt="x", **kw)
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    assert GenerationRequest(prompt="x", stop="\n").stop == ["\n"]


def test_zero_new_tokens_and_empty_prompt(engine):
    [zero] = engine.generate([GenerationRequest(prompt="def", max_new_tokens=0)])
    assert (zero.text, zero.token_ids, zero.finish_reason, zero.completion_tokens) == ("", [], "length", 0)
    [empty] = engine.generate([greedy("", n=5)])
    assert empty.prompt_tokens == 0 and len(empty.token_ids) == 5


def test_generate_refuses_while_a_server_loop_owns_the_engine(engine):
    seq = engine.add(greedy("def"))
    with pytest.raises(RuntimeError, match="in flight"):
        engine.generate([greedy("x")])
    engine.cancel(seq)
    assert not engine.has_work()
