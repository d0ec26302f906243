import pytest

from fmforge.plan.architecture import Architecture, from_hf_config
from fmforge.plan.cli_support import plan_command
from fmforge.plan.compute import estimate_compute
from fmforge.plan.errors import PlanError
from fmforge.hardware import HardwareError, get_hardware, known_hardware


def test_unknown_gpu_lists_known_ones():
    with pytest.raises(HardwareError) as exc:
        get_hardware("v100")
    msg = str(exc.value)
    assert "unknown GPU 'v100'" in msg
    for key in ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "a10g", "rtx-4090", "mi300x"):
        assert key in msg
        assert key in known_hardware()


def test_gpu_names_are_case_and_separator_insensitive():
    assert get_hardware("H100_SXM").key == "h100-sxm"


@pytest.mark.parametrize("kwargs,needle", [
    ({"params": -7e9, "tokens": 2e12}, "params must be > 0, got -7e+09"),
    ({"params": 7e9, "tokens": 0}, "tokens must be > 0, got 0"),
    ({"params": 7e9, "tokens": 2e12, "num_gpus": 0}, "number of GPUs must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "mfu": 0}, "MFU must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "mfu": 40}, "did you mean 0.4"),
    ({"params": 7e9, "tokens": 2e12, "price": -1}, "price per GPU-hour must be >= 0"),
    ({"params": 7e9, "tokens": 2e12, "micro_batch": -2}, "micro-batch size must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "gpu": "tpu-v5"}, "unknown GPU 'tpu-v5'; known: a100-40gb"),
    ({"budget": -5, "gpu": "h100-sxm"}, "budget in dollars must be > 0"),
    ({"params": 7e9}, "give the number of training tokens"),
    ({}, "nothing to plan"),
    ({"params": 7e9, "tokens": 1e9, "api_price": 10}, "--monthly-tokens"),
    ({"params": 7e9, "tokens": 1e9, "convention": "flops"}, "unknown FLOPs convention 'flops'"),
])
def test_bad_values_give_clear_messages(kwargs, needle):
    with pytest.raises(PlanError) as exc:
        plan_command(**kwargs)
    assert needle in str(exc.value)


def test_bad_architecture_values():
    with pytest.raises(PlanError, match="d_model must be > 0"):
        Architecture(d_model=0, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=8, ffn_dim=8,
                     vocab_size=10, seq_len=8, tie_embeddings=True)
    with pytest.raises(PlanError, match="must divide n_heads"):
        Architecture(d_model=64, n_layers=1, n_heads=4, n_kv_heads=3, head_dim=16, ffn_dim=8,
                     vocab_size=10, seq_len=8, tie_embeddings=True)
    with pytest.raises(PlanError, match="lacks"):
        from_hf_config({"hidden_size": 64})


def test_missing_hf_config_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        from_hf_config(tmp_path / "nope.json")


def test_nan_rejected():
    with pytest.raises(PlanError, match="NaN"):
        estimate_compute(float("nan"), 1.0, get_hardware("l4"), mfu=0.3)


def test_model_that_fits_on_no_gpus_is_reported_in_the_plan():
    out = plan_command(hf_config={"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                                  "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
                                  "max_position_embeddings": 131072},
                       tokens=1e12, gpu="l4", micro_batch=4)
    assert out.data["min_gpus"] is None
    assert any("fits on no number of l4 GPUs" in w for w in out.data["warnings"])
