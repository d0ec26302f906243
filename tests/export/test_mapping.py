"""The weight and config mapping to and from Hugging Face Llama, checked against
transformers itself: the defaults a config.json may leave out, both spellings of
the rope base that readers of the export use, training mode (no dropout on either
side) and the dtype transformers picks when not told; and what an import refuses
or tolerates in the tensors of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fmforge.export.hf import export_hf
from fmforge.export.mapping import UnsupportedModelError, from_hf_state_dict, model_config_from_hf, \
    to_hf_state_dict
from fmforge.inference.loading import load_trained

transformers = pytest.importorskip("transformers")


def test_a_config_json_with_only_its_model_type_imports_as_transformers_reads_it():
    """transformers leaves every key equal to LlamaConfig's default out of the
    config.json it saves: each missing key must mean what transformers takes it to."""
    ours = model_config_from_hf({"model_type": "llama"})
    theirs = transformers.LlamaConfig.from_dict({"model_type": "llama"})
    assert (ours.vocab_size, ours.d_model, ours.ffn_dim, ours.n_layers, ours.n_heads, ours.kv_heads,
            ours.seq_len, ours.norm_eps, ours.tie_embeddings, ours.init_std) == (
        theirs.vocab_size, theirs.hidden_size, theirs.intermediate_size, theirs.num_hidden_layers,
        theirs.num_attention_heads, theirs.num_key_value_heads, theirs.max_position_embeddings,
        theirs.rms_norm_eps, theirs.tie_word_embeddings, theirs.initializer_range)
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    assert ours.head_dim == theirs.hidden_size // theirs.num_attention_heads


def test_a_saved_llama_config_imports_with_transformers_values(tmp_path):
    """A LlamaConfig saved by transformers (defaults left out, rope in
    rope_parameters) gives the architecture transformers reads back from it."""
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=48, intermediate_size=80,
                                      num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                                      max_position_embeddings=64, rms_norm_eps=1e-5,
                                      tie_word_embeddings=True, initializer_range=0.01,
                                      rope_parameters={"rope_type": "default", "rope_theta": 250_000.0})
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    back = transformers.LlamaConfig.from_pretrained(tmp_path)
    ours = model_config_from_hf(raw)
    assert (ours.vocab_size, ours.d_model, ours.ffn_dim, ours.n_layers, ours.n_heads, ours.kv_heads,
            ours.seq_len, ours.norm_eps, ours.tie_embeddings, ours.init_std, ours.rope_theta) == (
        back.vocab_size, back.hidden_size, back.intermediate_size, back.num_hidden_layers,
        back.num_attention_heads, back.num_key_value_heads, back.max_position_embeddings,
        back.rms_norm_eps, back.tie_word_embeddings, back.initializer_range,
        back.rope_parameters["rope_theta"])


def hf_logits(path: Path, batch: torch.Tensor, train: bool = False, **kw) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kw)
    model.train(train)
    with torch.no_grad():
        return model(batch).logits


@pytest.fixture
def untied_export(tiny_runs, tmp_path_factory):
    """The untied run (rope base 500,000, MHA) exported, with our model and a batch.
    Exported for each test (not once per module): mutmut counts a test as reaching
    the export only when the export runs inside it."""
    run = tiny_runs["mha-untied"]
    out = export_hf(run, tmp_path_factory.mktemp("hf") / "hf")
    ours = load_trained(run, device="cpu")
    batch = torch.randint(0, ours.model.cfg.vocab_size, (2, ours.model.cfg.seq_len),
                          generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = ours.model(batch)
    return out, ours, batch, logits


@pytest.mark.parametrize("drop", [(), ("rope_parameters",), ("rope_theta", "rope_scaling")],
                         ids=["both", "legacy-keys-only", "rope-parameters-only"])
def test_each_spelling_of_the_rope_base_alone_gives_our_logits(untied_export, tmp_path, drop):
    """transformers 5 reads ``rope_parameters``; transformers 4 and vLLM read
    ``rope_theta`` (and ``rope_scaling``): the export must hold the model for each
    reader, so a config with only one of the two spellings must give our logits."""
    out, _, batch, ours = untied_export
    copy = tmp_path / "hf"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    for key in drop:
        del config[key]
    (copy / "config.json").write_text(json.dumps(config))
    diff = (hf_logits(copy, batch, dtype=torch.float32) - ours).abs().max().item()
    assert diff < 1e-4, diff


def test_the_export_has_no_dropout_and_loads_as_float32_untold(untied_export):
    """Fine-tuning the export with transformers starts from the model we trained:
    fmforge's Transformer has no dropout, so in training mode the logits are still
    ours. Loaded without a dtype, transformers picks the config's (float32, the
    dtype of the weights in the file), not a narrower one."""
    out, _, batch, ours = untied_export
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        diff = (model(batch).logits - ours).abs().max().item()
    assert diff < 1e-4, diff


def test_old_checkpoints_rotary_buffers_are_tolerated_and_anything_else_refused(tiny_runs):
    """Checkpoints saved by transformers before 4.31 hold each layer's
    ``self_attn.rotary_emb.inv_freq`` buffer (recomputed from the config): the import
    accepts them and gives the same weights. Any other extra tensor (a bias, a
    quantisation scale) is refused, naming the tensors, all of them when few."""
    trained = load_trained(tiny_runs["gqa-tied"], device="cpu")
    cfg = trained.model.cfg
    state = trained.model.state_dict()
    hf = to_hf_state_dict(state, cfg)
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    old = {**hf, **{f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in range(cfg.n_layers)}}
    back = from_hf_state_dict(old, cfg)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)

    biases = {f"model.layers.{i}.self_attn.{p}_proj.bias": torch.zeros(4) for i, p in
              [(0, "q"), (0, "k"), (0, "v"), (1, "q"), (1, "k")]}  # five: all named
    with pytest.raises(UnsupportedModelError) as err:
        from_hf_state_dict({**hf, **biases}, cfg, source="ckpt-dir")
    assert str(err.value) == (  # error messages are interface (docs/testing.md)
        f"ckpt-dir holds tensors a plain Llama does not have ({', '.join(sorted(biases))}): biases, "
        "quantisation scales or another architecture; fmforge imports only bias-free Llama checkpoints")


def test_many_extra_tensors_are_named_in_a_message_that_stays_short(tiny_runs):
    """Forty unknown tensors: the message names five (docs/export.md) and says there are more."""
    trained = load_trained(tiny_runs["gqa-tied"], device="cpu")
    cfg = trained.model.cfg
    hf = to_hf_state_dict(trained.model.state_dict(), cfg)
    for n in (6, 40):
        extra = {f"model.layers.0.mlp.scale_{i:02d}": torch.zeros(1) for i in range(n)}
        with pytest.raises(UnsupportedModelError) as err:
            from_hf_state_dict({**hf, **extra}, cfg)
        message = str(err.value)  # the first five in name order, then "..."
        assert message.startswith("the checkpoint holds tensors a plain Llama does not have ("
                                  + ", ".join(sorted(extra)[:5]) + ", ...): biases"), message


def test_a_missing_tensor_is_named(tiny_runs):
    trained = load_trained(tiny_runs["mha-untied"], device="cpu")
    cfg = trained.model.cfg
    hf = to_hf_state_dict(trained.model.state_dict(), cfg)
    for name in ("lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        partial = {k: v for k, v in hf.items() if k != name}
        with pytest.raises(UnsupportedModelError) as err:
            from_hf_state_dict(partial, cfg, source="ckpt-dir")
        assert str(err.value) == (f"ckpt-dir has no tensor {name!r}: not a Llama checkpoint fmforge "
                                  "can import (or an incomplete one)")
        with pytest.raises(UnsupportedModelError) as err:
            from_hf_state_dict(partial, cfg)
        assert str(err.value).startswith(f"the checkpoint has no tensor {name!r}")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_to_transformers_runs_the_attention_asked_for(tiny_runs, attn):
    """The in-memory LlamaForCausalLM of the parity tests and benchmarks: the
    attention kernel named is the one transformers runs (a benchmark compares
    speeds by it), with our logits either way."""
    from fmforge.export.mapping import to_transformers

    trained = load_trained(tiny_runs["mha-untied"], device="cpu")
    hf = to_transformers(trained.model, attn_implementation=attn)
    assert hf.config._attn_implementation == attn
    batch = torch.randint(0, trained.model.cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        diff = (hf(batch).logits - trained.model(batch)).abs().max().item()
    assert diff < 1e-4, diff


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 320,
         "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
         "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 64}
ONLY_LLAMA = "; fmforge imports only plain Llama checkpoints (model_type 'llama')"
NO_SCALING = "rope scaling (llama3, linear, dynamic, yarn ...) is not implemented"


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "model_type = 'mistral': not a Llama model"),
    ({"architectures": ["LlamaForSequenceClassification"]},
     "architectures = ['LlamaForSequenceClassification']: not LlamaForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu': fmforge's MLP is SwiGLU (silu)"),
    ({"attention_bias": True}, "attention_bias = True: fmforge's layers have no biases"),
    ({"mlp_bias": True}, "mlp_bias = True: fmforge's layers have no biases"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     f"rope_scaling = {{'rope_type': 'llama3', 'factor': 8.0}}: {NO_SCALING}"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}},  # transformers 4's older spelling
     f"rope_scaling = {{'type': 'linear', 'factor': 2.0}}: {NO_SCALING}"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     f"rope_parameters = {{'rope_type': 'yarn', 'rope_theta': 10000.0, 'factor': 4.0}}: {NO_SCALING}"),
    ({"head_dim": 16}, "head_dim = 16: differs from hidden_size / num_attention_heads = 8"),
    ({"num_attention_heads": 5}, "num_attention_heads = 5: does not divide hidden_size=48"),
], ids=lambda v: None)
def test_refusals_name_the_file_the_key_its_value_and_why(change, message):
    """Error messages are interface (docs/testing.md): the whole text, as a user reads it."""
    with pytest.raises(UnsupportedModelError) as err:
        model_config_from_hf({**LLAMA, **change})
    assert str(err.value) == f"config.json: {message}{ONLY_LLAMA}"
    with pytest.raises(UnsupportedModelError) as err:
        model_config_from_hf({**LLAMA, **change}, source="/models/x/config.json")
    assert str(err.value).startswith(f"/models/x/config.json: {message}")


@pytest.mark.parametrize("change", [
    {"rope_scaling": {"rope_type": "default"}}, {"rope_scaling": {"type": "default"}},
    {"rope_scaling": {}}, {"rope_parameters": {"rope_theta": 5e5}}, {"architectures": None},
    {"head_dim": 8}, {"num_key_value_heads": None},
], ids=lambda v: None)
def test_what_transformers_calls_a_plain_llama_is_accepted(change):
    """Spellings transformers writes for a plain Llama: rope scaling of type
    default (either key) or empty, rope_parameters without a type (the default),
    no architectures list, head_dim equal to hidden_size / heads, no KV head count
    (multi-head attention), each as transformers' LlamaConfig reads it."""
    ours = model_config_from_hf({**LLAMA, **change})
    theirs = transformers.LlamaConfig.from_dict({**LLAMA, **change})
    assert (ours.n_heads, ours.kv_heads, ours.head_dim) == (
        theirs.num_attention_heads, theirs.num_key_value_heads, theirs.head_dim)
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]


def test_an_impossible_size_is_refused_naming_the_file():
    with pytest.raises(UnsupportedModelError) as err:
        model_config_from_hf({**LLAMA, "num_hidden_layers": 0}, source="ckpt/config.json")
    assert str(err.value).startswith("ckpt/config.json: not an architecture fmforge supports: ")
    assert "n_layers" in str(err.value)


def test_the_export_names_its_class_and_init_scale_as_transformers_reads_them(tiny_runs, tmp_path):
    """vLLM and TGI pick the model class from config.json's ``architectures``, which
    must name the class transformers loads; ``initializer_range`` is the scale
    transformers initialises new rows with (resize_token_embeddings): the run's
    init_std, here a run whose model section says 0.01."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs["gqa-tied"].root, run_dir)
    state_path = next((run_dir / "checkpoints").glob("step-*/trainer_state.json"))
    state = json.loads(state_path.read_text())
    state["model"]["init_std"] = 0.01
    state_path.write_text(json.dumps(state))
    from fmforge.rundir import RunDir

    out = export_hf(RunDir(run_dir), tmp_path / "hf")
    config = transformers.AutoConfig.from_pretrained(str(out))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert config.architectures == [type(model).__name__]
    assert config.initializer_range == 0.01
    # the special ids transformers' own tokenizer of the export gives (a missing key
    # would mean LlamaConfig's defaults, bos 1 and eos 2)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
