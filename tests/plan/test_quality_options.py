"""How ``fmforge plan --decide`` files each scored model: a model as it is costs
nothing to make; a fine-tune's output (an adapter, or a whole model from full
fine-tuning or continued pretraining) is "customize" and costs the fine-tune's
wall time at the device's price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmforge.hardware import get_hardware
from fmforge.plan.quality import quality_table


def _scored(root: Path, against: dict[str, Path]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    entries = {name: {"path": str(path), "kind": "peft" if (path / "adapter_config.json").exists() else "hf",
                      "bits_per_byte": 1.5 + i / 10, "params": 1000, "per_source": {}}
               for i, (name, path) in enumerate(against.items())}
    (root / "eval.json").write_text(json.dumps({"against": entries}))


def _finetuned(root: Path, output: str, wall_s: float, method: str, train_on: str = "examples") -> Path:
    out = root / "finetune" / output
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (root / "finetune" / "summary.json").write_text(
        json.dumps({"method": method, "train_on": train_on, "wall_s": wall_s, "device": "cpu"}))
    return out


def test_a_continued_pretraining_output_is_customize_with_its_cost(tmp_path):
    cpu = get_hardware("cpu", price_per_hour=0.5, measure_cpu=False)
    downloaded = tmp_path / "models" / "general"
    downloaded.mkdir(parents=True)
    (downloaded / "config.json").write_text("{}")
    adapted = _finetuned(tmp_path / "runs" / "adapted", "model", wall_s=720.0, method="full",
                         train_on="tokens")
    run = tmp_path / "runs" / "own"
    _scored(run, {"general": downloaded, "adapted": adapted})

    rows = {r["model"]: r for r in quality_table(run, None, {}, cpu)["rows"]}

    assert rows["general"]["option"] == "use as is" and rows["general"]["one_time_usd"] == 0.0
    assert rows["adapted"]["option"] == "customize"
    assert rows["adapted"]["one_time_usd"] == pytest.approx(720 / 3600 * 0.5)  # 12 minutes at $0.50/hour
    assert "continued pretraining, 720 s" in rows["adapted"]["basis"]


def test_an_adapter_is_customize_with_its_cost(tmp_path):
    cpu = get_hardware("cpu", price_per_hour=2.0, measure_cpu=False)
    adapter = _finetuned(tmp_path / "runs" / "lora", "adapter", wall_s=90.0, method="lora")
    (adapter / "adapter_config.json").write_text("{}")
    run = tmp_path / "runs" / "own"
    _scored(run, {"lora": adapter})

    row = quality_table(run, None, {}, cpu)["rows"][0]

    assert row["option"] == "customize" and row["one_time_usd"] == pytest.approx(0.05)


def test_the_table_reads_in_80_columns_with_each_sources_figures(tmp_path):
    """Piped to a file or a log (80 columns), every figure is whole: the models'
    names, bits per byte overall and per source, the compressors per source."""
    import io

    from rich.console import Console

    from fmforge.plan.report import render_quality

    cpu = get_hardware("cpu", price_per_hour=0.5, measure_cpu=False)
    adapted = _finetuned(tmp_path / "runs" / "code-model-adapted", "model", wall_s=307.0, method="full",
                         train_on="tokens")
    run = tmp_path / "runs" / "own"
    _scored(run, {"code-model-adapted": adapted})
    ev = json.loads((run / "eval.json").read_text())
    ev["against"]["code-model-adapted"]["per_source"] = {"package-docs": {"bits_per_byte": 1.4506},
                                                         "stdlib-code": {"bits_per_byte": 1.0967}}
    ev.update(bits_per_byte=1.2579, gzip_bits_per_byte=1.8638, xz_bits_per_byte=1.5196, step=1399,
              per_source={"package-docs": {"bits_per_byte": 1.2722, "gzip_bits_per_byte": 1.7115,
                                           "xz_bits_per_byte": 1.4511},
                          "stdlib-code": {"bits_per_byte": 1.2308, "gzip_bits_per_byte": 1.9742,
                                          "xz_bits_per_byte": 1.7049}})
    (run / "eval.json").write_text(json.dumps(ev))

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    for part in render_quality(quality_table(run, None, {}, cpu)):
        console.print(part)
    text = out.getvalue()

    assert max(len(line) for line in text.splitlines()) <= 80
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if line.count("│") > 4}
    assert "code-model-adapted" in rows  # whole, on one line
    for figure in ("1.4506", "1.0967", "1.2722", "1.2308", "1.4511", "1.7049"):
        assert figure in text
    assert "measured; continued pretraining, 307 s" in text.replace("\n", " ")
    assert any(k.startswith("xz") for k in rows)
