"""checkpoint.compress = "zstd": smaller files, the same state back, checksums still catch damage, resharding."""
from __future__ import annotations

import pytest
import torch

from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState, read_manifest
from alphaexa.config import ModelConfig
from alphaexa.errors import UserError
from alphaexa.model import build_model
from tests.train_runs import losses, train

pytest.importorskip("zstandard")


def _trained(seed):
    cfg = ModelConfig(name="c", n_layers=2, d_model=64, n_heads=4, vocab_size=256, max_seq_len=32)
    model = build_model(cfg, seed=seed)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.arange(32).view(1, 32)).square().mean().backward()
    optim.step()
    return cfg, model, optim


def _size(directory):
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix == ".distcp")


def test_compressed_checkpoint_is_smaller_loads_the_same_and_is_verified(tmp_path):
    cfg, model, optim = _trained(0)
    app = {"model": ModelOptimizerState(model, optim)}
    for compress in ("none", "zstd"):
        with CheckpointManager(tmp_path / compress, model_config=cfg, compress=compress) as manager:
            manager.save(1, app)
    plain, packed = tmp_path / "none" / "step_000001", tmp_path / "zstd" / "step_000001"
    assert read_manifest(packed)["save"]["compress"] == "zstd"
    # AdamW's second moments of one step and the untouched norms compress well even in fp32.
    assert _size(packed) < 0.9 * _size(plain)
    _, fresh, fresh_optim = _trained(1)
    with CheckpointManager(tmp_path / "zstd", model_config=cfg) as manager:
        assert manager.load_latest({"model": ModelOptimizerState(fresh, fresh_optim)}) == 1
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(optim.state_dict()["state"][0]["exp_avg_sq"], fresh_optim.state_dict()["state"][0]["exp_avg_sq"])
    data = packed / "__0_0.distcp"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with CheckpointManager(tmp_path / "zstd", model_config=cfg) as manager, \
            pytest.raises(UserError, match="sha256 mismatch"):
        manager.load(1, {"model": ModelOptimizerState(fresh, fresh_optim)})


def test_unknown_compression_is_a_one_line_config_error(tmp_path):
    from alphaexa.train.config import load_run_config
    from topology.modelcfg import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoint.compress='lz4': must be one of none, zstd"):
        load_run_config(None, ["model.preset=debug", "checkpoint.compress=lz4"])


@pytest.mark.exhaustive
@pytest.mark.multiproc
def test_compressed_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    cache = tmp_path / "cache"
    train(tmp_path / "ref", "checkpoint.async=false", nproc=2, cache_dir=cache)
    train(tmp_path / "zstd", "checkpoint.compress=zstd", nproc=2, stop_at=4, cache_dir=cache)
    train(tmp_path / "zstd", nproc=1, resume=True, cache_dir=cache)
    ref, got = losses(tmp_path / "ref"), losses(tmp_path / "zstd")
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
