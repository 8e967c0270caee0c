"""``alphaexa plan --verify``: the real parallelized model on the meta device under a fake process group.

Real runs of the CLI: a 250B plan on 16 Aurora nodes (192 ranks, pipeline x tensor x expert x
FSDP) is simulated for its sampled ranks, and the shards' bytes must match the planner's; a plan
file made for another model or world size is refused in one line before anything is built.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from rank_processes import run_cli
from train_runs import REPO

REQUEST = ["--model", "alphaexa-250b", "--system", "aurora", "--nodes", "16", "--global-batch", "384",
           "--seq-len", "4096", "--top", "1"]


def alphaexa(*args: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "alphaexa", "plan", *args], env=dict(os.environ), cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    done = alphaexa(*REQUEST, "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_verify_measures_every_sampled_rank_within_3_percent(plan_file):
    done = alphaexa(*REQUEST, "--verify", "--json", "--plan-file", str(plan_file))
    assert done.returncode == 0, done.stderr
    verify = json.loads(done.stdout)["verify"]
    assert set(verify) == {"ranks", "max_rel_error", "seconds"}
    layout = json.loads(plan_file.read_text())["plans"][0]["layout"]
    roles = {r["role"] for r in verify["ranks"]}
    assert "first stage" in roles and ("last stage" in roles) == (layout["pp"] > 1)
    assert ("expert-parallel rank" in roles) == (layout["ep"] > 1)
    assert verify["max_rel_error"] <= 0.03
    for rank in verify["ranks"]:
        assert set(rank["measured_gib"]) == set(rank["predicted_gib"]) == {"params", "grads", "optimizer"}
        assert rank["measured_gib"]["params"] > 0 or rank["role"].startswith("last rank")


def test_a_plan_for_another_model_or_world_is_refused_in_one_line(plan_file, tmp_path):
    other_world = alphaexa(*[("8" if a == "16" else a) for a in REQUEST], "--verify", "--plan-file", str(plan_file))
    assert other_world.returncode == 2 and other_world.stderr.count("\n") == 1, other_world.stderr
    assert "192 ranks" in other_world.stderr and "96" in other_world.stderr
    other_model = alphaexa(*[("30b-moe" if a == "alphaexa-250b" else a) for a in REQUEST], "--verify",
                           "--plan-file", str(plan_file))
    assert other_model.returncode == 2 and "alphaexa-250b" in other_model.stderr, other_model.stderr
    assert other_model.stderr.count("\n") == 1
    broken = json.loads(plan_file.read_text())
    broken["plans"][0]["layout"]["ep"] = 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    impossible = alphaexa(*REQUEST, "--verify", "--plan-file", str(bad))
    assert impossible.returncode == 2 and "ep=5" in impossible.stderr and impossible.stderr.count("\n") == 1
