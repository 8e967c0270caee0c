"""TensorBoard scalars read back with TensorBoard's own reader, and the per-layer expert and step-time plots."""
from __future__ import annotations

import json

import pytest

from alphaexa.cli import main
from alphaexa.train.metrics import read_metrics
from tests.train_runs import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    """4 steps of the debug MoE model (capacity 1.0, so tokens are dropped) with TensorBoard on."""
    run = tmp_path_factory.mktemp("monitor") / "run"
    train(run, "train.steps=4", "checkpoint.every=0", "logging.tensorboard=true", "model.capacity_factor=1.0",
          cache_dir=tmp_path_factory.mktemp("cache"))
    return run


def test_tensorboard_has_every_scalar_of_metrics_jsonl(moe_run):
    steps, _, _ = read_metrics(moe_run)
    events = event_accumulator.EventAccumulator(str(moe_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    expected = {}
    for r in steps:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gib", "aux_loss", "z_loss",
                    "dropped_fraction"):
            expected[(f"train/{key}", r["step"])] = r[key]
        for layer, shares in r["expert_load_per_layer"].items():
            for e, share in enumerate(shares):
                expected[(f"experts/layer_{layer}/load_{e}", r["step"])] = share
            expected[(f"experts/layer_{layer}/dropped_fraction", r["step"])] = r["dropped_fraction_per_layer"][layer]
    assert len(expected) == 4 * (9 + 4 + 1)  # debug: one MoE block (1) of 4 experts
    for (tag, step), value in expected.items():
        assert scalars[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-9), (tag, step)
    assert max(r["dropped_fraction"] for r in steps) > 0  # capacity 1.0 drops some assignments
    assert all(sum(r["expert_load_per_layer"]["1"]) == pytest.approx(1.0, abs=1e-5) for r in steps)


def test_plot_draws_the_expert_heatmap_and_the_step_breakdown(moe_run, capsys):
    from matplotlib.image import imread

    from alphaexa.train.config import load_run_config
    from topology.hardware import load_system
    from topology.planner import plan

    cfg = load_run_config(moe_run / "config.toml")
    # The catalogue's CPU host: the demo plans for the discovered node, whose discovery (a torch
    # probe in a subprocess) costs seconds and draws nothing different.
    result = plan(cfg.model, load_system("cpu"), 1, cfg.train.global_batch, cfg.train.seq_len, top=1)
    (moe_run / "plan.json").write_text(json.dumps(result.to_dict()))
    assert main(["plot", str(moe_run)]) == 0
    written = {p.split("/")[-1] for p in capsys.readouterr().out.split()}
    assert {"expert_heatmap.png", "step_breakdown.png", "expert_load.png", "loss.png"} <= written
    for name in ("expert_heatmap.png", "step_breakdown.png"):
        image = imread(moe_run / "plots" / name)
        assert image.shape[0] > 200 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
