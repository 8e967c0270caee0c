"""The demo: its planning step (fast), and the whole `alphaexa demo` run (exhaustive: minutes)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_runs import HANG_GUARD_S, REPO, run_env

from alphaexa.train.config import load_run_config, read_plan_layout
from alphaexa.train.demo import DEMO_CONFIG, kinds_of_parallelism, plan_layout
from alphaexa.train.metrics import read_metrics
from topology.layout import Layout


def test_kinds_of_parallelism_are_named_from_the_layout():
    assert kinds_of_parallelism(Layout(dp_shard=4, ep=2)) == ["data x4 (zero3)", "expert x2"]
    assert kinds_of_parallelism(Layout(pp=2, tp=2, dp_shard=1)) == ["tensor x2", "pipeline x2"]
    assert kinds_of_parallelism(Layout(dp_shard=1)) == []


def test_demo_plans_a_layout_with_two_kinds_of_parallelism_for_four_ranks(tmp_path):
    # On a 2-core machine the four ranks share cores: the planner must still place them.
    cfg = load_run_config(DEMO_CONFIG)
    layout, why = plan_layout(cfg, 4, tmp_path / "plan.json")
    assert len(kinds_of_parallelism(layout)) >= 2, (layout.short(), why)
    assert why.startswith("planner:")
    planned = load_run_config(DEMO_CONFIG, plan=tmp_path / "plan.json")
    assert planned.layout_for(4) == layout.resolve(4)
    # The plan names its engine and offload beside the layout: the demo's runs natively, on the device.
    assert read_plan_layout(tmp_path / "plan.json") == {**layout.to_dict(), "engine": "native", "offload": "none"}
    assert json.loads((tmp_path / "plan.json").read_text())["request"]["world"] == 4


@pytest.mark.exhaustive
@pytest.mark.multiproc
def test_demo_trains_resumes_and_generates(tmp_path):
    run = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "alphaexa", "demo", "--run-dir", str(run), "--steps", "30",
                           "--resume-steps", "10"], check=False, capture_output=True, text=True,
                          timeout=HANG_GUARD_S * 2,
                          env={**run_env(), "ALPHAEXA_DATA_CACHE": str(tmp_path / "cache")}, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    steps, evals, events = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert [e["step"] for e in events if e["event"] == "resume"] == [20]
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.0
    assert evals and (run / "plots" / "loss.png").is_file() and (run / "plan.json").is_file()
    assert ">>> The for statement" in done.stdout and f"run directory: {run.resolve()}" in done.stdout
