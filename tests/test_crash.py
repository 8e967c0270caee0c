"""Crash safety: SIGKILL of one rank ends the whole job (no hang), and a restart resumes from the
last complete checkpoint with every sample of the data stream used exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_runs import HANG_GUARD_S, REPO, run_env, steps, train, train_command

from alphaexa.data import PackedSamples, ResumableSampler
from alphaexa.parallel import local_rows
from alphaexa.train.metrics import read_metrics

pytestmark = pytest.mark.multiproc

STEPS, GLOBAL_BATCH, DP = 8, 8, 2  # the kill comes after step 4: half the run is left to resume


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    done = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "loss" in record and not record.get("eval"):
            done = max(done, record["step"])
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_of_a_rank_stops_the_job_and_resume_repeats_and_skips_no_sample(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    sets = [f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.async=true", "debug.record_samples=true",
            "train.collective_timeout_s=30", f"data.cache_dir={cache}"]
    parent = subprocess.Popen(train_command(run, *sets, nproc=DP), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=run_env(), cwd=REPO)
    first_line = parent.stdout.readline()
    assert first_line.startswith("spawned 2 ranks"), first_line
    pids = [int(p) for p in first_line.split("(pids ")[1].split(")")[0].split(", ")]
    deadline = time.monotonic() + HANG_GUARD_S
    while _logged_steps(run) < 4:
        assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
        time.sleep(0.02)
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = parent.communicate(timeout=HANG_GUARD_S)
    crashed_at = _logged_steps(run)

    assert parent.returncode != 0
    assert "rank 1 ended with killed by SIGKILL; stopped the other ranks" in stderr
    assert not _alive(pids[0])
    assert crashed_at < STEPS
    last_complete = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))

    train(run, nproc=DP, resume=True, config=None, cache_dir=cache)

    resume = [e for e in read_metrics(run)[2] if e["event"] == "resume"]
    assert [e["step"] for e in resume] == [last_complete]
    assert sorted(steps(run)) == list(range(1, STEPS + 1))
    assert steps(run)[STEPS]["consumed_samples"] == STEPS * GLOBAL_BATCH

    # Every rank's samples per step, in launch order: the first launch's, then the resumed one's.
    dataset = resume[0]["dataset"]
    stream = ResumableSampler(len(PackedSamples(dataset, 32)), GLOBAL_BATCH, seed=0)
    for dp_rank in range(DP):
        records = [json.loads(line) for line in (run / "samples" / f"rank_{dp_rank}.jsonl").read_text().splitlines()]
        # The resumed launch starts over at a step the first one had already reached (or the next).
        split = next((i for i in range(1, len(records)) if records[i]["step"] <= records[i - 1]["step"]),
                     last_complete)
        first_launch, resumed = records[:split], records[split:]
        assert [r["step"] for r in resumed] == list(range(last_complete + 1, STEPS + 1))
        final = {r["step"]: r for r in first_launch if r["step"] <= last_complete}
        final.update({r["step"]: r for r in resumed})
        rows = local_rows(GLOBAL_BATCH, GLOBAL_BATCH // DP, dp_rank, DP).numpy()  # mbs 1
        for step in range(1, STEPS + 1):
            expected = stream.sample_ids((step - 1) * GLOBAL_BATCH, GLOBAL_BATCH)[rows].tolist()
            assert final[step]["sample_ids"] == expected, (dp_rank, step)
        # Steps run after the checkpoint and before the kill are replayed with the very same samples.
        for r in first_launch:
            if r["step"] > last_complete:
                assert final[r["step"]]["sample_ids"] == r["sample_ids"]


@pytest.mark.exhaustive
def test_without_a_supervisor_the_surviving_rank_ends_on_its_own(tmp_path):
    """Ranks started directly (as torchrun would, but with nobody to stop them): after SIGKILL of
    rank 1, rank 0's next collective fails or times out (train.collective_timeout_s) and it exits."""
    from alphaexa.train.spawn import rank_environment
    from backends.launch import free_port

    run, cache = tmp_path / "run", tmp_path / "cache"
    cmd = train_command(run, f"train.steps={STEPS}", "train.collective_timeout_s=20", f"data.cache_dir={cache}")
    port = free_port()
    ranks = [subprocess.Popen(cmd, env=rank_environment(r, DP, port, run_env()), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(DP)]
    deadline = time.monotonic() + HANG_GUARD_S
    while _logged_steps(run) < 3:
        assert all(r.poll() is None for r in ranks) and time.monotonic() < deadline
        time.sleep(0.02)
    ranks[1].kill()
    _, stderr = ranks[0].communicate(timeout=HANG_GUARD_S)
    ranks[1].wait()
    assert ranks[0].returncode != 0, stderr
    assert _logged_steps(run) < STEPS
