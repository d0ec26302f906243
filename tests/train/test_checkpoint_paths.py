"""Every path of ``train/checkpoint.py`` in this process: the FSDP2 save and load
(a ``fully_shard`` model on a gloo group of one process created here, so no
torchrun), resharding into a plain module, consolidation, the damage checks
(each with the message a user reads) and the listing and pruning rules.

The oracles are independent of the code under test: the trained model's own
logits and optimizer moments, the bytes the ``safetensors`` library and
``zipfile`` read back, and sizes computed by hand from the file format."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import fmforge.train.checkpoint as checkpoint
from fmforge.config import ModelConfig, TrainConfig
from fmforge.model.transformer import Transformer
from fmforge.train.checkpoint import (
    DCP_DIR,
    CheckpointFormatError,
    CheckpointReadError,
    checkpoint_damage,
    checkpoint_dir,
    consolidate,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    save_checkpoint,
    save_sharded_checkpoint,
)
from fmforge.train.optim import build_optimizer

X = torch.arange(32).reshape(2, 16) % 200


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=200, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=2, seq_len=16))


def _opt(model):
    return build_optimizer(model, TrainConfig(max_steps=10, warmup_steps=0))


def _step(model, opt):
    model(X, X).backward()
    opt.step()
    opt.zero_grad()


def _logits(model):
    with torch.no_grad():
        return model(X).detach().clone()


def _moments(opt) -> list[torch.Tensor]:
    out = []
    for s in opt.state_dict()["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            t = s[k]
            out.append(t.full_tensor() if hasattr(t, "full_tensor") else t)
    return out


@pytest.fixture
def group():
    """A gloo process group of one process, made here: FSDP2 and DCP run their
    real code paths with world size 1. Per test, so that the tests without it
    (one process reading a sharded checkpoint) never run inside one, whatever
    order they run in."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sharded(seed: int):
    from torch.distributed.fsdp import fully_shard

    model = _model(seed)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, _opt(model)


# --------------------------------------------------------------- FSDP2, in-process


def test_fsdp_save_then_load_into_fsdp_plain_and_consolidated(group, tmp_path):
    model, opt = _sharded(0)
    _step(model, opt)
    want_logits, want_moments = _logits(model), _moments(opt)
    calls = []

    def barrier():
        # Every rank meets rank 0 at the temporary directory, then after the shards.
        calls.append(sorted(p.name for p in tmp_path.iterdir()))
        dist.barrier()

    ck = save_sharded_checkpoint(tmp_path, 4, model, opt, {"tokens": 64}, keep=3,
                                 is_main=True, barrier=barrier)
    assert ck == tmp_path / "step-000004"
    # The temporary directory exists at the first barrier (rank 0 made it), holds the
    # shards at the second, and is renamed away by the third.
    assert calls == [[".step-000004.tmp-sharded"], [".step-000004.tmp-sharded"], ["step-000004"]]
    assert sorted(p.name for p in ck.iterdir()) == [DCP_DIR, "trainer_state.json"]
    assert json.loads((ck / "trainer_state.json").read_text()) == {"step": 4, "tokens": 64}
    assert (ck / DCP_DIR / ".metadata").is_file()
    assert list_checkpoints(tmp_path) == [(4, ck)]
    umask = os.umask(0)
    os.umask(umask)
    for p in ck.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert checkpoint_damage(ck) is None

    # Into a fresh FSDP model with its optimizer: weights and moments come back.
    other, other_opt = _sharded(1)
    assert not torch.equal(_logits(other), want_logits)
    state = load_checkpoint(ck, other, other_opt)
    assert state == {"step": 4, "tokens": 64}
    assert torch.equal(_logits(other), want_logits)
    for a, b in zip(want_moments, _moments(other_opt), strict=True):
        assert torch.equal(a, b)

    # Into a plain module (resume on fewer processes, inference): DCP reshards.
    plain = _model(2)
    assert load_checkpoint(ck, plain)["step"] == 4
    assert torch.equal(_logits(plain), want_logits)

    # consolidate: one model.safetensors holding exactly those weights, mode 0666-umask.
    out = consolidate(ck, _model(3))
    assert out == ck / "model.safetensors"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert not (ck / ".model.safetensors.tmp").exists()
    reread = _model(4)
    reread.load_state_dict(load_file(str(out)), strict=False)
    assert torch.equal(_logits(reread), want_logits)
    # A consolidated checkpoint still resumes an FSDP model through dcp/.
    again, again_opt = _sharded(5)
    load_checkpoint(ck, again, again_opt)
    assert torch.equal(_logits(again), want_logits)
    for a, b in zip(want_moments, _moments(again_opt), strict=True):
        assert torch.equal(a, b)


def test_fsdp_save_over_an_existing_step_and_pruning(group, tmp_path):
    model, opt = _sharded(0)
    for step in (1, 2, 3):
        _step(model, opt)
        save_sharded_checkpoint(tmp_path, step, model, opt, {"n": step}, keep=2, is_main=True,
                                barrier=dist.barrier, protect={1})
    # keep=2 keeps 2 and 3; step 1 is protected (a WSD decay began there).
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3]
    save_sharded_checkpoint(tmp_path, 4, model, opt, {"n": 4}, keep=2, is_main=True,
                            barrier=dist.barrier)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    # Saving a step again replaces it whole (a resumed run that reaches it again).
    want = _logits(model)
    save_sharded_checkpoint(tmp_path, 4, model, opt, {"n": 44}, keep=2, is_main=True,
                            barrier=dist.barrier)
    assert load_trainer_state(tmp_path / "step-000004") == {"step": 4, "n": 44}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003", "step-000004"]
    plain = _model(9)
    load_checkpoint(tmp_path / "step-000004", plain)
    assert torch.equal(_logits(plain), want)


def test_a_rank_other_than_0_writes_shards_but_never_renames(group, tmp_path, monkeypatch):
    model, opt = _sharded(0)
    # Rank 0 has made the temporary directory; this process plays rank 1.
    (tmp_path / ".step-000002.tmp-sharded").mkdir()
    ck = save_sharded_checkpoint(tmp_path, 2, model, opt, {}, keep=1, is_main=False,
                                 barrier=dist.barrier)
    assert ck == tmp_path / "step-000002" and not ck.exists()
    tmp = tmp_path / ".step-000002.tmp-sharded"
    assert (tmp / DCP_DIR / ".metadata").is_file() and not (tmp / "trainer_state.json").exists()


def test_a_single_file_checkpoint_cannot_resume_fsdp_and_is_left_alone(group, tmp_path):
    model = _model(0)
    ck = save_checkpoint(tmp_path, 3, model, _opt(model), {}, keep=1)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    sharded, sharded_opt = _sharded(1)
    with pytest.raises(CheckpointFormatError) as err:
        load_checkpoint(ck, sharded, sharded_opt)
    assert str(err.value) == (
        f"{ck} was written by one process (or DDP) and holds no sharded checkpoint, so "
        "FSDP cannot resume it: resume with train.parallel=ddp (or on one process); the "
        "checkpoint is untouched")
    assert isinstance(err.value, ValueError)
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before


def test_is_sharded_module(group):
    assert checkpoint._is_sharded_module(_sharded(0)[0])
    assert not checkpoint._is_sharded_module(_model(0))


# ---------------------------------------------- plain modules: which file is read


def test_a_consolidated_checkpoint_without_optimizer_reads_the_safetensors_file(tmp_path, monkeypatch):
    model, opt = _model(0), None
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    consolidate(ck, _model(1))
    # Weights only: the single file; no DCP read at all.
    monkeypatch.setattr(checkpoint, "_load_through_dcp", lambda *a: pytest.fail("read dcp/"))
    plain = _model(2)
    load_checkpoint(ck, plain)
    assert torch.equal(_logits(plain), _logits(model))


def test_a_dcp_read_failure_is_an_exception_naming_the_directory(tmp_path):
    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    shard = next((ck / DCP_DIR).glob("*.distcp"))
    shard.unlink()  # DCP raises its own BaseException-derived error for this
    other = _model(1)
    with pytest.raises(CheckpointReadError, match=f"^reading {ck / DCP_DIR} failed: ") as err:
        load_checkpoint(ck, other, _opt(other))
    assert isinstance(err.value, Exception)
    assert isinstance(err.value.__cause__, BaseException)


def test_consolidate_without_dcp_says_so(tmp_path):
    model = _model(0)
    ck = save_checkpoint(tmp_path, 2, model, None, {}, keep=1)
    with pytest.raises(FileNotFoundError) as err:
        consolidate(ck, _model(1))
    assert str(err.value) == f"{ck} has no sharded checkpoint (dcp/): nothing to consolidate"


def test_single_file_round_trip_without_optimizer_writes_no_optimizer_file(tmp_path):
    model = _model(0)
    ck = save_checkpoint(tmp_path, 12, model, None, {"a": [1, 2]}, keep=5)
    assert sorted(p.name for p in ck.iterdir()) == ["model.safetensors", "trainer_state.json"]
    assert json.loads((ck / "trainer_state.json").read_text()) == {"step": 12, "a": [1, 2]}
    other = _model(1)
    assert load_checkpoint(ck, other) == {"step": 12, "a": [1, 2]}
    assert torch.equal(_logits(other), _logits(model))


# ------------------------------------------------------------- listing and pruning


def _fake(root: Path, name: str, *, state=True, weights="safetensors") -> Path:
    d = root / name
    d.mkdir(parents=True)
    if state:
        (d / "trainer_state.json").write_text("{}")
    if weights == "safetensors":
        (d / "model.safetensors").write_bytes(b"x")
    elif weights == "dcp":
        (d / DCP_DIR).mkdir()
        (d / DCP_DIR / ".metadata").write_bytes(b"x")
    return d


def test_listing_counts_complete_step_directories_only_in_step_order(tmp_path):
    assert list_checkpoints(tmp_path / "absent") == []
    assert latest_checkpoint(tmp_path / "absent") is None
    (tmp_path / "file").write_text("")
    assert list_checkpoints(tmp_path / "file") == []  # a file, not a directory
    a = _fake(tmp_path, "step-000100")
    b = _fake(tmp_path, "step-000020", weights="dcp")
    c = _fake(tmp_path, "step-1000000")  # seven digits: steps past 999999
    _fake(tmp_path, "step-000030", state=False)  # killed mid-save
    _fake(tmp_path, "step-000040", weights=None)  # state but no weights
    _fake(tmp_path, "step-000050", weights="dcp-dir-only")
    (tmp_path / "step-000060" / DCP_DIR / ".metadata").mkdir(parents=True)  # not a file
    (tmp_path / "step-000060" / "trainer_state.json").write_text("{}")
    _fake(tmp_path, "step-00070")  # five digits: not ours
    _fake(tmp_path, "xstep-000080")
    _fake(tmp_path, "step-000090.unreadable")
    _fake(tmp_path, "step-000095").joinpath("model.safetensors").unlink()
    (tmp_path / "step-000095" / "model.safetensors").mkdir()  # a directory, not a file
    assert list_checkpoints(tmp_path) == [(20, b), (100, a), (1000000, c)]
    assert latest_checkpoint(tmp_path) == c
    assert checkpoint_dir(tmp_path, 7) == tmp_path / "step-000007"
    assert checkpoint_dir(str(tmp_path), 1234567) == tmp_path / "step-1234567"


def test_prune_keeps_the_newest_and_the_protected(tmp_path):
    for s in (1, 2, 3, 4, 5):
        _fake(tmp_path, f"step-{s:06d}")
    prune_checkpoints(tmp_path, 2, protect={2})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 5]
    prune_checkpoints(tmp_path, 1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]


def test_save_checkpoint_prunes_with_protect(tmp_path):
    model = _model(0)
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, model, None, {}, keep=1, protect={1})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 3]


# ------------------------------------------------------------------ damage checks


def _safetensors(path: Path) -> bytes:
    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2)}, str(path))
    return path.read_bytes()


def _ckpt(tmp_path: Path, *, optimizer=True) -> Path:
    ck = tmp_path / "step-000001"
    ck.mkdir()
    (ck / "trainer_state.json").write_text('{"step": 1}')
    _safetensors(ck / "model.safetensors")
    if optimizer:
        torch.save({"state": {0: torch.arange(1000.0)}}, ck / "optimizer.pt")
    return ck


def test_damage_of_the_trainer_state(tmp_path):
    ck = _ckpt(tmp_path)
    assert checkpoint_damage(ck) is None
    (ck / "trainer_state.json").write_text('{"step": 1')
    found = checkpoint_damage(ck)
    assert found.startswith("trainer_state.json is not valid JSON (") and found.endswith(")")
    (ck / "trainer_state.json").write_bytes(b'{"s": "\xff"}')
    assert checkpoint_damage(ck).startswith("trainer_state.json is not valid JSON (")
    (ck / "trainer_state.json").unlink()
    assert checkpoint_damage(ck) == "trainer_state.json is missing"


def test_damage_of_the_safetensors_file(tmp_path):
    ck = _ckpt(tmp_path)
    path = ck / "model.safetensors"
    whole = path.read_bytes()
    n = int.from_bytes(whole[:8], "little")
    # By hand: 3 + 4 float32 = 28 bytes of data after the 8-byte length and the header.
    assert len(whole) == 8 + n + 28
    path.write_bytes(whole[:5])
    assert checkpoint_damage(ck) == "model.safetensors is truncated (5 bytes)"
    path.write_bytes(whole[:8 + n - 1])
    assert checkpoint_damage(ck) == (f"model.safetensors is truncated: its header alone needs "
                                     f"{n + 8:,} bytes, the file has {8 + n - 1:,}")
    path.write_bytes(whole[:8 + n])  # header whole, all data gone
    assert checkpoint_damage(ck) == f"model.safetensors has {8 + n:,} bytes where its header describes {8 + n + 28:,}"
    path.write_bytes(whole + b"\0")
    assert checkpoint_damage(ck) == f"model.safetensors has {len(whole) + 1:,} bytes where its header describes {len(whole):,}"
    path.write_bytes(whole[:8] + b"}" + whole[9:])  # header no longer JSON
    assert checkpoint_damage(ck) == "model.safetensors has a corrupt header"
    path.write_bytes(whole[:8] + b"\xff" + whole[9:])  # nor UTF-8
    assert checkpoint_damage(ck) == "model.safetensors has a corrupt header"
    for header in (b'{"a": {"dtype": "F32"}}', b'{"a": 5}', b'{"a": {"data_offsets": [0]}}', b"[1, 2]"):
        path.write_bytes(len(header).to_bytes(8, "little") + header)
        assert checkpoint_damage(ck) == "model.safetensors has a corrupt header", header
    # Only metadata: no tensors, no data, whole.
    header = b'{"__metadata__": {"format": "pt"}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert checkpoint_damage(ck) is None
    # The largest end offset counts, whatever the order of the entries.
    header = b'{"b": {"data_offsets": [4, 10]}, "a": {"data_offsets": [0, 4]}, "__metadata__": {}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 10)
    assert checkpoint_damage(ck) is None
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 9)
    assert checkpoint_damage(ck) == f"model.safetensors has {8 + len(header) + 9:,} bytes where its header describes {8 + len(header) + 10:,}"


def test_damage_of_the_optimizer_file(tmp_path):
    ck = _ckpt(tmp_path)
    opt = ck / "optimizer.pt"
    whole = opt.read_bytes()
    with zipfile.ZipFile(opt) as z:
        member = max(z.infolist(), key=lambda i: i.compress_size)
    data = bytearray(whole)
    # The local header's own name and extra-field lengths (torch pads the extra field).
    name_len = int.from_bytes(whole[member.header_offset + 26: member.header_offset + 28], "little")
    extra_len = int.from_bytes(whole[member.header_offset + 28: member.header_offset + 30], "little")
    at = member.header_offset + 30 + name_len + extra_len + 10
    data[at] ^= 0xFF  # one bit-flipped byte inside the largest member's data
    opt.write_bytes(bytes(data))
    assert checkpoint_damage(ck) == f"optimizer.pt is corrupt (member {member.filename} fails its CRC)"
    opt.write_bytes(whole[: len(whole) // 2])
    found = checkpoint_damage(ck)
    assert found.startswith("optimizer.pt is not a whole archive (")
    opt.write_bytes(b"")
    assert checkpoint_damage(ck).startswith("optimizer.pt is not a whole archive (")
    opt.unlink()
    assert checkpoint_damage(ck) == "optimizer.pt is missing"
    opt.mkdir()  # not a file
    assert checkpoint_damage(ck) == "optimizer.pt is missing"


def test_a_checkpoint_with_dcp_needs_no_optimizer_file_but_its_safetensors_is_checked(tmp_path):
    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    consolidate(ck, _model(1))
    assert not (ck / "optimizer.pt").exists()
    assert checkpoint_damage(ck) is None
    st = ck / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-4])
    assert checkpoint_damage(ck).startswith("model.safetensors has ")


def test_damage_of_dcp(tmp_path):
    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    shard = next((ck / DCP_DIR).glob("*.distcp"))
    size = shard.stat().st_size
    # The end of the last byte range that .metadata points at, from DCP's own reader.
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ck / DCP_DIR)).read_metadata()
    end = max(i.offset + i.length for i in meta.storage_data.values())
    assert end == size
    shard.write_bytes(shard.read_bytes()[:-1])
    assert checkpoint_damage(ck) == f"{DCP_DIR}/{shard.name} is truncated ({size - 1:,} of {size:,} bytes)"
    shard.unlink()
    assert checkpoint_damage(ck) == f"{DCP_DIR}/{shard.name} is missing"
    (ck / DCP_DIR / ".metadata").write_bytes(b"not a pickle")
    found = checkpoint_damage(ck)
    assert found.startswith(f"{DCP_DIR}/.metadata is corrupt (") and found.endswith(")")
    assert "UnpicklingError" in found


def test_a_sharded_save_makes_a_new_run_directory_and_one_process_reads_it_quietly(tmp_path):
    import warnings

    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    root = tmp_path / "fresh-run" / "checkpoints"  # nothing of it exists yet
    ck = save_sharded_checkpoint(root, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    assert list_checkpoints(root) == [(1, ck)]
    # One process reading a sharded checkpoint is intended: DCP's warning about it is
    # not shown to the user (a warning made an error here would fail the load).
    other = _model(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(ck, other, _opt(other))
    assert torch.equal(_logits(other), _logits(model))


def test_weights_of_another_shape_are_refused_not_half_loaded(tmp_path):
    torch.manual_seed(0)
    small = Transformer(ModelConfig(vocab_size=200, d_model=32, n_layers=1, n_heads=4,
                                    n_kv_heads=2, seq_len=16))
    ck = save_checkpoint(tmp_path, 1, small, None, {}, keep=1)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_checkpoint(ck, _model(1))  # two layers: the second has no weights in the file


def test_dcp_damage_needs_the_furthest_byte_of_each_file(tmp_path, monkeypatch):
    """Several byte ranges in one file: the file must reach the furthest of them,
    whatever order .metadata lists them in; a zero-length range needs no byte."""
    from types import SimpleNamespace

    from torch.distributed.checkpoint import FileSystemReader

    sharded = tmp_path / DCP_DIR
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"x")
    (sharded / "a.distcp").write_bytes(b"\0" * 50)
    (sharded / "empty.distcp").write_bytes(b"")

    def info(path, offset, length):
        return SimpleNamespace(relative_path=path, offset=offset, length=length)

    entries = {"w1": info("a.distcp", 0, 100), "w2": info("a.distcp", 0, 10), "e": info("empty.distcp", 0, 0)}
    monkeypatch.setattr(FileSystemReader, "read_metadata", lambda self: SimpleNamespace(storage_data=entries))
    assert checkpoint._dcp_damage(sharded) == f"{DCP_DIR}/a.distcp is truncated (50 of 100 bytes)"
    entries["w1"] = info("a.distcp", 40, 10)  # ends at 50: whole
    assert checkpoint._dcp_damage(sharded) is None


def test_only_dcps_single_process_warning_is_silenced(tmp_path, monkeypatch):
    import warnings

    import torch.distributed.checkpoint as dcp

    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 1, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    real = dcp.load

    def load(*args, **kwargs):
        warnings.warn("torch.distributed is disabled, unavailable or uninitialized, assuming the intent "
                      "is to load in a single process.", UserWarning)
        warnings.warn("some other warning about the checkpoint", UserWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(dcp, "load", load)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_checkpoint(ck, _model(1))
    messages = [str(w.message) for w in seen]
    assert "some other warning about the checkpoint" in messages
    assert not [m for m in messages if "assuming the intent is to load" in m]


def test_a_sharded_save_clears_what_a_killed_save_left_and_restores_optimizer_settings(group, tmp_path):
    model, opt = _sharded(0)
    _step(model, opt)
    for g in opt.param_groups:
        g["lr"] = 0.0123  # what the schedule had set at this step
    stale = tmp_path / ".step-000003.tmp-sharded"
    (stale / DCP_DIR).mkdir(parents=True)
    (stale / DCP_DIR / "junk.distcp").write_bytes(b"half a shard")  # a save killed mid-way
    ck = save_sharded_checkpoint(tmp_path, 3, model, opt, {}, keep=1, is_main=True, barrier=dist.barrier)
    assert not stale.exists() and not (ck / DCP_DIR / "junk.distcp").exists()
    other, other_opt = _sharded(1)
    load_checkpoint(ck, other, other_opt)
    assert [g["lr"] for g in other_opt.param_groups] == [0.0123] * len(opt.param_groups)


def test_a_consolidated_checkpoint_resumes_a_plain_model_with_its_optimizer_from_dcp(tmp_path):
    model = _model(0)
    opt = _opt(model)
    _step(model, opt)
    ck = save_sharded_checkpoint(tmp_path, 2, model, opt, {}, keep=1, is_main=True, barrier=lambda: None)
    consolidate(ck, _model(1))
    assert not (ck / "optimizer.pt").exists()  # the moments live only in dcp/
    other = _model(2)
    other_opt = _opt(other)
    load_checkpoint(ck, other, other_opt)
    for a, b in zip(_moments(opt), _moments(other_opt), strict=True):
        assert torch.equal(a, b)


def test_pruning_tolerates_a_checkpoint_already_gone(tmp_path, monkeypatch):
    keep = _fake(tmp_path, "step-000002")
    gone = tmp_path / "step-000001"  # listed, then removed by another process before the prune
    monkeypatch.setattr(checkpoint, "list_checkpoints", lambda root: [(1, gone), (2, keep)])
    prune_checkpoints(tmp_path, 1)
    assert keep.exists()


class _Payload:
    """Stands for code a tampered optimizer.pt would run when unpickled."""

    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return {}


def test_an_optimizer_file_that_would_run_code_is_refused(tmp_path):
    import pickle

    model = _model(0)
    opt = _opt(model)
    ck = save_checkpoint(tmp_path, 1, model, opt, {}, keep=1)
    state = opt.state_dict()
    state["extra"] = _Payload()
    torch.save(state, ck / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ck, _model(1), _opt(_model(1)))
    assert not _Payload.ran
