"""DeepSpeed's 1F1B ``TrainSchedule`` replayed with blocking transfers against the model's exchange count.

docs/planner.md section 10, "Session 10: the legacy DeepSpeed-pipeline rows (branch legacy12)": session 7's change S
(``Implementation.deepspeed_pipe``, ``StageTerms.pipe_xchg``) charges a middle stage four blocking transfers a
micro-batch, and mtnlg9 checked with ``bench/deepspeed_trainschedule_makespan.py`` that the schedule's bubble is the
1F1B one at zero transfer time.  With a transfer time the replay puts 3.6-3.9 transfers a slot on the path: the
model's four is not short.  A guard (it passes before and after legacy12, which changed no term): it goes stale
loudly if the replay or the count moves.
"""
from __future__ import annotations

import pytest
from bench_module import load_bench

pytest.importorskip("deepspeed.runtime.pipe.schedule")


@pytest.fixture(scope="module")
def bench():
    return load_bench("deepspeed_trainschedule_makespan")


@pytest.mark.parametrize("stages, micro_batches, tb", [(4, 32, 3.0), (12, 64, 3.0), (35, 70, 3.5)])
def test_a_blocking_transfer_costs_a_slot_at_most_the_four_the_model_charges(bench, stages, micro_batches, tb):
    tf, x = 1.0, 0.02
    slots = micro_batches + stages - 1
    assert bench.makespan(stages, micro_batches, tf, tb) == pytest.approx(slots * (tf + tb))
    per_slot = (bench.makespan(stages, micro_batches, tf, tb, x) / slots - tf - tb) / x
    assert 3.0 < per_slot <= 4.0, per_slot
