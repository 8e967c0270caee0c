"""The makespan of DeepSpeed's 1F1B ``TrainSchedule`` with blocking, paired sends and receives (issue 15).

Replays the command lists DeepSpeed's own ``deepspeed.runtime.pipe.schedule.TrainSchedule`` yields for every
stage (imported, not re-written) with a forward of ``tf`` seconds, a backward of ``tb`` and each
SendActivation/RecvActivation and SendGrad/RecvGrad pair a rendezvous (both sides wait for each other, as the
engine's blocking p2p does), and prints the step against the 1F1B count the cost model charges,
(m + p - 1)(tf + tb), and against a global lock-step, 2 (m + p - 1) max(tf, tb).  With a transfer time x (each
rendezvous then holds both sides for x, the engine's blocking p2p) it also prints how many transfers a micro-batch
slot the replay puts on the path, (makespan / (m + p - 1) - tf - tb) / x, against the 4 a middle stage's
``StageTerms.pipe_xchg`` charges.  CPU only, about a second:

    python bench/deepspeed_trainschedule_makespan.py              # MT-NLG's shapes and a few small ones
    python bench/deepspeed_trainschedule_makespan.py 35 240 1 3   # stages, micro-batches, tf, tb
    python bench/deepspeed_trainschedule_makespan.py 35 240 1 3.5 0.02   # ... and a transfer time

The installed DeepSpeed's ``TrainSchedule`` orders each step's two exchanges as DeepSpeed has since b528f50e3
(2023-03, "Fix buffer size for pipeline parallel and communication schedule", #2862: SendGrad before RecvActivation,
RecvGrad before SendActivation); the rows' versions (v0.3.15 under DeeperSpeed, v0.5.4, 56c52238) have the original
order of 65c2f974d (#392).  Session 10 (legacy12) replayed v0.5.4's schedule.py as well: the same makespans, with and
without transfers (3.6-3.9 transfers a slot on the path at 4-35 stages).
"""
from __future__ import annotations

import sys

_PAIRED = {  # command -> (neighbour offset, the neighbour's matching command)
    "SendGrad": (-1, "RecvGrad"), "RecvActivation": (-1, "SendActivation"),
    "RecvGrad": (1, "SendGrad"), "SendActivation": (1, "RecvActivation"),
}


def stage_programs(stages: int, micro_batches: int) -> list[list[str]]:
    from deepspeed.runtime.pipe.schedule import TrainSchedule
    keep = set(_PAIRED) | {"ForwardPass", "BackwardPass"}
    out = []
    for stage in range(stages):
        sched = TrainSchedule(micro_batches=micro_batches, stages=stages, stage_id=stage)
        out.append([type(c).__name__ for step in sched.steps() for c in step if type(c).__name__ in keep])
    return out


def makespan(stages: int, micro_batches: int, tf: float, tb: float, transfer: float = 0.0) -> float:
    progs = stage_programs(stages, micro_batches)
    clock, pos = [0.0] * stages, [0] * stages
    while any(pos[s] < len(progs[s]) for s in range(stages)):
        moved = False
        for s in range(stages):
            while pos[s] < len(progs[s]):
                cmd = progs[s][pos[s]]
                if cmd in ("ForwardPass", "BackwardPass"):
                    clock[s] += tf if cmd == "ForwardPass" else tb
                    pos[s] += 1
                    moved = True
                    continue
                offset, mate = _PAIRED[cmd]
                o = s + offset
                if pos[o] < len(progs[o]) and progs[o][pos[o]] == mate:
                    clock[s] = clock[o] = max(clock[s], clock[o]) + transfer
                    pos[s] += 1
                    pos[o] += 1
                    moved = True
                    continue
                break  # blocked until the neighbour reaches the matching call
        if not moved:
            raise RuntimeError("the schedule deadlocked")
    return max(clock)


def main(argv: list[str]) -> int:
    cases = [tuple(float(x) for x in argv)] if argv else [
        (4, 8, 1, 2), (4, 8, 1, 3), (35, 240, 1, 3), (35, 192, 1, 3), (35, 160, 1, 3), (35, 240, 1, 3.5, 0.02),
        (12, 256, 1, 3, 0.02), (4, 32, 1, 3, 0.02)]
    print(f"{'stages':>6} {'mbs':>5} {'tf':>4} {'tb':>4} {'x':>5} {'makespan':>9} {'1f1b':>7} {'lockstep':>8} "
          f"{'x a slot':>8}")
    for case in cases:
        p, m, tf, tb = int(case[0]), int(case[1]), case[2], case[3]
        x = case[4] if len(case) > 4 else 0.0
        span = makespan(p, m, tf, tb, x)
        slots = m + p - 1
        per_slot = f"{(span / slots - tf - tb) / x:.2f}" if x else "-"
        print(f"{p:>6} {m:>5} {tf:>4g} {tb:>4g} {x:>5g} {span:>9g} {slots * (tf + tb):>7g} "
              f"{2 * slots * max(tf, tb):>8g} {per_slot:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
