"""Hugging Face export and import: transformers loads what we write and computes
the same logits and the same greedy tokens; an HF Llama we import computes the
same logits in fmforge; unsupported architectures are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.export.hf import export_hf, import_hf
from fmforge.export.mapping import UnsupportedModelError, model_config_from_hf
from fmforge.inference.loading import load_trained
from fmforge.rundir import RunDir

transformers = pytest.importorskip("transformers")

runner = CliRunner()
PROMPT = "def alpha_1(beta, gamma):\n    return"


def load_hf(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, dtype=torch.float32)
    return model.eval()


def test_export_loads_in_transformers_with_identical_logits_and_greedy_tokens(tiny_run, tmp_path, greedy):
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", "hf", str(tiny_run.root), str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}

    ours = load_trained(tiny_run, device="cpu")
    cfg = ours.model.cfg
    hf = load_hf(out)
    hc = hf.config
    assert (hc.num_key_value_heads, hc.num_attention_heads, hc.tie_word_embeddings,
            hc.max_position_embeddings, hc.rms_norm_eps) == (
        cfg.kv_heads, cfg.n_heads, cfg.tie_embeddings, cfg.seq_len, cfg.norm_eps)
    assert hc.eos_token_id == ours.eos_id
    if cfg.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()

    # The tokenizer files load as a transformers tokenizer and encode alike.
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = ours.tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert hf_tok(PROMPT, add_special_tokens=False)["input_ids"] == ids

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    with torch.no_grad():
        diff = (ours.model(batch) - hf(batch).logits).abs().max().item()
    assert diff < 1e-4, diff

    ours_new = greedy(ours.model, ids, 30)
    hf.generation_config.eos_token_id = None  # 30 tokens on both sides, EOS or not
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=30,
                             pad_token_id=ours.eos_id)
    assert hf_out[0, len(ids):].tolist() == ours_new
    assert len(ours_new) == 30


def test_export_refuses_to_replace_a_directory_that_is_not_an_export(tiny_runs, tmp_path):
    run = tiny_runs["gqa-tied"]
    (tmp_path / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["export", "hf", str(run.root), str(tmp_path)])
    assert result.exit_code == 2 and "not an earlier export" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    # An earlier export is replaced whole.
    out = tmp_path / "again"
    export_hf(run, out)
    (out / "stale.txt").write_text("old")
    export_hf(run, out)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()


def random_llama(tmp_path: Path, tokenizer_dir: Path, eos_id: int, **kw) -> Path:
    """A random LlamaForCausalLM saved with transformers, with a run's tokenizer."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{
        "vocab_size": 320, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "eos_token_id": eos_id, "bos_token_id": None, **kw})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a mixed-up norm weight shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    path = tmp_path / "hf-llama"
    model.save_pretrained(str(path), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (path / name).write_bytes((tokenizer_dir / name).read_bytes())
    return path


@pytest.mark.parametrize("kw", [
    {"tie_word_embeddings": False, "rope_parameters": {"rope_type": "default", "rope_theta": 500_000.0}},
    {"tie_word_embeddings": True, "num_key_value_heads": 6},
], ids=["gqa-untied", "mha-tied"])
def test_import_gives_a_run_with_identical_logits(tiny_runs, tmp_path, kw):
    source = tiny_runs["gqa-tied"]
    eos_id = load_trained(source, device="cpu").eos_id
    hf_dir = random_llama(tmp_path, source.tokenizer, eos_id, **kw)
    hf = load_hf(hf_dir)

    run_dir = tmp_path / "imported"
    result = runner.invoke(app, ["import", "hf", str(hf_dir), str(run_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for rel in ("config.yaml", "tokenizer/tokenizer.json", "checkpoints/step-000000/model.safetensors",
                "checkpoints/step-000000/trainer_state.json"):
        assert (run_dir / rel).is_file(), rel
    state = json.loads((run_dir / "checkpoints/step-000000/trainer_state.json").read_text())
    assert state["model"]["n_kv_heads"] == hf.config.num_key_value_heads

    ours = load_trained(RunDir(run_dir), device="cpu")
    assert ours.eos_id == eos_id and ours.step == 0
    assert ours.model.cfg.tie_embeddings == hf.config.tie_word_embeddings
    batch = torch.randint(0, 320, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours.model(batch) - hf(batch).logits).abs().max().item()
    assert diff < 1e-4, diff

    # fmforge generate reads it like a trained run.
    result = runner.invoke(app, ["generate", str(run_dir), "--prompt", "def", "--temperature", "0",
                                 "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output + repr(result.exception)

    # A second import into the same directory is refused, not merged.
    again = runner.invoke(app, ["import", "hf", str(hf_dir), str(run_dir)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_export_then_import_round_trips_the_weights_exactly(tiny_run, tmp_path):
    export_hf(tiny_run, tmp_path / "hf")
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_trained(tiny_run, device="cpu"), load_trained(back, device="cpu")
    # The import names the MLP width outright (d_ff) instead of deriving it.
    assert a.model.cfg.model_copy(update={"d_ff": a.model.cfg.ffn_dim}) == b.model.cfg
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    assert a.eos_id == b.eos_id


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 320,
         "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
         "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 64}


@pytest.mark.parametrize("change, key", [
    ({"model_type": "mistral"}, "model_type"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_parameters"),
    ({"head_dim": 16}, "head_dim"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unsupported_architectures_are_refused_by_key(change, key):
    with pytest.raises(UnsupportedModelError, match=key):
        model_config_from_hf({**LLAMA, **change})


def test_missing_keys_take_llama_defaults():
    cfg = model_config_from_hf({**LLAMA, "rope_scaling": None, "head_dim": 8})
    assert (cfg.norm_eps, cfg.rope_theta, cfg.tie_embeddings, cfg.kv_heads, cfg.ffn_dim) == (
        1e-6, 10_000.0, False, 2, 80)


def test_import_refuses_biases_in_the_weights(tiny_runs, tmp_path):
    source = tiny_runs["gqa-tied"]
    hf_dir = random_llama(tmp_path, source.tokenizer, 0, attention_bias=True)
    config = json.loads((hf_dir / "config.json").read_text())
    config["attention_bias"] = False  # a config that lies: the tensors still give it away
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="bias"):
        import_hf(hf_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()
