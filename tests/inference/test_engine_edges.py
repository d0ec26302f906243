"""The engine's edges, each checked against a reference outside it (issue 32,
inference/engine.py's surviving mutants): stop strings that straddle two multi-character
tokens and what a stream sends while a tail might still begin one (the OpenAI
completions contract: the text ends just before the first stop string, finish_reason
"stop"; a stream sends what cannot begin a stop string as soon as it is generated; the
texts are the tokenizer's own decode of scripted ids, cut by hand with ``str.index``);
greedy ids and an empty prompt against the model's own uncached forward; a fresh
cache's size by hand count; a brought Llama-2-style tokenizer's prompt count and
completion text; top_p=1 (OpenAI's default); and every refusal's full text.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fmforge.inference.engine import Engine, GenerationRequest

TEXT = "the quick brown fox jumps over the lazy dog"


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
def test_a_stop_string_split_across_two_long_tokens_stops_the_text(trained, left, scripted):
    # "k b" (1 + 2 characters) and "ck b" (2 + 2): the stop string begins inside a
    # 3-character token, so while that token is the newest, only part of it may be sent.
    ids, pieces = _script(trained.tokenizer)
    i = _boundary(pieces)
    stop = pieces[i][-left:] + pieces[i + 1][:2]
    cut = TEXT.index(stop)
    assert cut == len("".join(pieces[: i + 1])) - left, "the stop first occurs at the boundary"

    [res] = scripted(trained, ids).generate([_request(len(ids), ["never-appears", stop])])
    assert (res.text, res.finish_reason) == (TEXT[:cut], "stop")
    # The ids that spelled the stop string are kept; every generated token is counted.
    assert res.token_ids == ids[: i + 2] and res.completion_tokens == i + 2

    streamed = list(scripted(trained, ids).stream(_request(len(ids), [stop])))
    assert "".join(streamed) == TEXT[:cut] and all(streamed)


def test_a_stream_holds_back_only_the_character_that_may_begin_a_stop_string(trained, scripted):
    # The stop string begins with token i's last character and never occurs: that
    # character alone waits for the next token; the rest of token i is sent with it.
    ids, pieces = _script(trained.tokenizer)
    i = _boundary(pieces)
    stop = pieces[i][-1] + "\x00"
    expected = pieces[:i] + [pieces[i][:-1], pieces[i][-1] + pieces[i + 1]] + pieces[i + 2:]

    assert list(scripted(trained, ids).stream(_request(len(ids), [stop]))) == expected

    # The step-level API (a server's loop) gives each step's piece as a str, the same pieces.
    engine = scripted(trained, ids)
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
    # The cache holds a row per request in flight, never more than max_batch rows (the
    # engine's documented memory bound), and room for 3 prompt + 5 new positions. Hand
    # count of its bytes for conftest's model: keys and values (2) x 2 layers x 2 kv
    # heads x head_dim 32/4 = 8 x 4 bytes (float32) per row and position.
    engine = Engine(trained, max_batch=max_batch)
    engine.generate([GenerationRequest(prompt_ids=[5 + i] * 3, max_new_tokens=5, temperature=0,
                                       stop_token_ids=[]) for i in range(batch)])
    rows, positions = engine.cache.rows, engine.cache.length
    assert batch <= rows <= max_batch and 3 + 5 <= positions <= trained.model.cfg.seq_len
    held = sum(t.numel() * t.element_size() for t in engine.cache.k + engine.cache.v)
    assert held == 2 * 2 * 2 * 8 * 4 * rows * positions


def _sentencepiece_style(make_model, **model_kw):
    """A Llama-2-style tokenizer (words as '▁word', the decoder dropping the first
    one's space, a post-processor adding <s>, end-of-text </s> = id 1) and a model
    over its 8 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from fmforge.inference.loading import TrainedModel

    words = ["<s>", "</s>", "<unk>", "▁the", "▁quick", "▁brown", "▁fox", "▁jumps"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    assert tok.encode("the quick").ids == [0, 3, 4]  # <s> added by default
    return TrainedModel(model=make_model(len(words), **model_kw), tokenizer=tok, device=torch.device("cpu"),
                        step=0, eos_id=1)


def test_a_brought_tokenizers_completion_reads_on_from_the_prompt(make_model, scripted):
    # The tokenize stage encodes documents without special tokens, so the prompt "the
    # quick" is its 2 words, no <s>; and the completion ▁brown ▁fox is " brown fox", the
    # tokenizer's own decode of prompt + completion less the prompt's text (OpenAI's
    # echo: prompt + text is the whole).
    trained = _sentencepiece_style(make_model)
    whole = trained.tokenizer.decode([3, 4, 5, 6])
    assert whole == "the quick brown fox"
    request = GenerationRequest(prompt="the quick", max_new_tokens=2, temperature=0, stop_token_ids=[])
    [res] = scripted(trained, [5, 6]).generate([request])
    assert res.prompt_tokens == 2
    assert "the quick" + res.text == whole
    assert "the quick" + "".join(scripted(trained, [5, 6]).stream(request)) == whole


def test_an_empty_prompt_continues_from_end_of_text_as_a_document_does(make_model):
    # Documents are written after an end-of-text in training, so an empty prompt is the
    # one-id prompt [</s>] (id 1 here; conftest's <|endoftext|> is id 0, like the
    # fallback for a tokenizer without one): the model's own greedy continuation of it,
    # with a model whose next token depends on its context (init_std 0.3, see above).
    trained = _sentencepiece_style(make_model, init_std=0.3)
    [empty] = Engine(trained).generate([GenerationRequest(prompt="", max_new_tokens=12, temperature=0,
                                                          stop_token_ids=[])])
    assert empty.token_ids == greedy_by_recomputation(trained.model, [1], 12)
    assert empty.prompt_tokens == 0


def test_top_p_1_is_accepted_and_filters_nothing(engine):
    # OpenAI's top_p: in (0, 1], default 1 (every token considered), the same as no filter.
    with_1, without = engine.generate([
        GenerationRequest(prompt="def", max_new_tokens=20, temperature=1.0, seed=s, top_p=p,
                          stop_token_ids=[]) for s, p in ((3, 1.0), (3, None))])
    assert with_1.token_ids == without.token_ids


def test_refusals_say_what_to_do_in_full(trained, make_model):
    with pytest.raises(ValueError, match=r"^give exactly one of prompt \(text\) and prompt_ids$"):
        GenerationRequest()
    with pytest.raises(ValueError, match=r"^give exactly one of prompt \(text\) and prompt_ids$"):
        GenerationRequest(prompt="x", prompt_ids=[1])
    with pytest.raises(ValueError, match="^a stop string must not be empty$"):
        GenerationRequest(prompt="x", stop=["\n", ""])
    with pytest.raises(ValueError, match="^max_batch must be >= 1, got 0$"):
        Engine(trained, max_batch=0)
    bf16 = dataclasses.replace(trained, model=make_model(trained.tokenizer.get_vocab_size()).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"^pack_weights=True cannot be honoured: .*bfloat16.*; "
                                         r"leave pack_weights unset to use the plain products$"):
        Engine(bf16, pack_weights=True)
    engine = Engine(trained)
    engine.add(GenerationRequest(prompt="def", max_new_tokens=4))
    busy = (r"^the engine has sequences in flight from add\(\); drive it with step\(\) "
            r"\(generate and stream run their own loop\)$")
    with pytest.raises(RuntimeError, match=busy):
        engine.generate([GenerationRequest(prompt="x")])
    with pytest.raises(RuntimeError, match=busy):
        next(engine.stream(GenerationRequest(prompt="x")))
