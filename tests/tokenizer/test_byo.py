"""Bring your own tokenizer (tokenizer.path): a tokenizer.json, a Hugging Face
directory and another run's tokenizer are adopted; a missing end-of-text token is
added with a message; a bad path is a clear error naming the key, exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.tokenizer.encode import run_tokenize_stage
from fmforge.tokenizer.load import load_tokenizer

TEXT = ["hello world, the quick brown fox jumps over the lazy dog 12345"] * 20


def plain_bpe(vocab: int = 290) -> Tokenizer:
    """A byte-level BPE with no special tokens at all."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


@pytest.fixture
def config(tmp_path, make_tiny_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_tiny_config(tmp_path)))
    return path


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code not in (0, 2):
        raise AssertionError(result.output) from result.exception
    return result


@pytest.fixture
def data_done(config):
    assert invoke("data", config).exit_code == 0
    return config


def test_tokenizer_json_without_eos_gets_one_added(tmp_path, data_done):
    tok = plain_bpe()
    n = tok.get_vocab_size()
    tok.save(str(tmp_path / "mine.json"))
    result = invoke("tokenizer", data_done, f"tokenizer.path={tmp_path / 'mine.json'}")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "has no end-of-text token; added '<|endoftext|>' as id " + str(n) in out
    run_tok = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer" / "tokenizer.json"))
    assert run_tok.token_to_id("<|endoftext|>") == n and run_tok.token_to_id("<|pad|>") == n + 1
    assert run_tok.encode("hello world").ids == tok.encode("hello world").ids  # the same vocabulary
    byo = json.loads((tmp_path / "run" / "tokenizer" / "byo.json").read_text())
    assert byo["added"] == ["<|endoftext|>", "<|pad|>"]
    # and the tokenize stage ends every document with it
    assert invoke("tokenize", data_done, f"tokenizer.path={tmp_path / 'mine.json'}").exit_code == 0
    meta = json.loads((tmp_path / "run" / "tokens" / "meta.json").read_text())
    assert meta["eos_id"] == n and meta["eos_token"] == "<|endoftext|>"


def test_hf_directory_keeps_its_own_eos_and_pad(tmp_path, data_done):
    from transformers import PreTrainedTokenizerFast

    base = plain_bpe()
    base.add_special_tokens(["</s>", "<pad>"])
    hf = PreTrainedTokenizerFast(tokenizer_object=base, eos_token="</s>", pad_token="<pad>")
    hf.save_pretrained(str(tmp_path / "hfdir"))
    result = invoke("tokenizer", data_done, f"tokenizer.path={tmp_path / 'hfdir'}")
    assert result.exit_code == 0, result.output
    assert "added" not in result.output
    conf = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer_config.json").read_text())
    assert (conf["eos_token"], conf["pad_token"]) == ("</s>", "<pad>")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    assert loaded.eos_token_id == base.token_to_id("</s>")


def test_another_runs_tokenizer_is_adopted(tmp_path, make_tiny_config, data_done):
    assert invoke("tokenizer", data_done).exit_code == 0
    first = tmp_path / "run" / "tokenizer"
    (tmp_path / "other").mkdir()
    raw = make_tiny_config(tmp_path / "other")
    raw["tokenizer"]["path"] = str(first)
    other_cfg = tmp_path / "other" / "c.yaml"
    other_cfg.write_text(yaml.safe_dump(raw))
    assert invoke("data", other_cfg).exit_code == 0
    result = invoke("tokenizer", other_cfg)
    assert result.exit_code == 0, result.output
    other = tmp_path / "other" / "run" / "tokenizer"
    assert (other / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    conf = json.loads((other / "tokenizer_config.json").read_text())
    assert conf["chat_template"] == json.loads((first / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("case", ["missing", "not_json", "dir_without_json", "too_large"])
def test_bad_path_is_a_clear_error(tmp_path, data_done, case):
    if case == "missing":
        target, words = tmp_path / "nope" / "tokenizer.json", ["tokenizer.path", "does not exist"]
    elif case == "not_json":
        target = tmp_path / "broken.json"
        target.write_text('{"version": "1.0", "model": ')
        words = ["tokenizer.path", "is not a tokenizer.json"]
    elif case == "dir_without_json":
        target = tmp_path / "slow"
        target.mkdir()
        (target / "tokenizer.model").write_bytes(b"\0")
        words = ["tokenizer.path", "has no tokenizer.json"]
    else:
        target = tmp_path / "big.json"
        big = plain_bpe(400)
        assert big.get_vocab_size() + 2 > 300  # the config's tokenizer.vocab_size
        big.save(str(target))
        words = ["tokenizer.vocab_size", f"has {big.get_vocab_size() + 2} tokens"]  # + the added eos and pad
    result = invoke("tokenizer", data_done, f"tokenizer.path={target}")
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "error:" in out and "Traceback" not in out
    for w in words:
        assert w in out, out
    assert not (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()


def test_adopted_tokenizer_round_trips_corpus(tmp_path, data_done):
    plain_bpe().save(str(tmp_path / "mine.json"))
    invoke("tokenizer", data_done, f"tokenizer.path={tmp_path / 'mine.json'}")
    from fmforge.config import load_config
    from fmforge.rundir import RunDir

    cfg = load_config(data_done, [f"tokenizer.path={tmp_path / 'mine.json'}"])
    run = RunDir(cfg.run_dir)
    run_tokenize_stage(cfg, run)
    tok = load_tokenizer(run)
    text = "naïve 東京 <|endoftext|>"
    assert load_tokenizer(run, raw_text=True).decode(load_tokenizer(run, raw_text=True).encode(text).ids) == text
    assert tok.token_to_id("<|endoftext|>") is not None


def test_a_relative_tokenizer_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    # found in review: it was resolved against the current directory
    from fmforge.tokenizer.byo import resolve_tokenizer_file

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tok.json").write_text("{}")
    monkeypatch.chdir("/")
    assert resolve_tokenizer_file("tok.json", str(tmp_path / "conf")) == tmp_path / "conf" / "tok.json"


def test_a_bare_tokenizer_json_gets_a_chat_template_transformers_can_apply(tmp_path, data_done):
    # found in review: only a directory with its own tokenizer_config.json had one
    from transformers import AutoTokenizer

    plain_bpe().save(str(tmp_path / "mine.json"))
    assert invoke("tokenizer", data_done, f"tokenizer.path={tmp_path / 'mine.json'}").exit_code == 0
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    text = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi\n<|assistant|>\n"
