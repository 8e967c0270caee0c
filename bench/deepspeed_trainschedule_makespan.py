"""The makespan of DeepSpeed's 1F1B ``TrainSchedule`` with blocking, paired sends and receives (issue 15).

Replays the command lists DeepSpeed's own ``deepspeed.runtime.pipe.schedule.TrainSchedule`` yields for every
stage (imported, not re-written) with a forward of ``tf`` seconds, a backward of ``tb`` and each
SendActivation/RecvActivation and SendGrad/RecvGrad pair a rendezvous (both sides wait for each other, as the
engine's blocking p2p does), and prints the step against the 1F1B count the cost model charges,
(m + p - 1)(tf + tb), and against a global lock-step, 2 (m + p - 1) max(tf, tb).  CPU only, about a second:

    python bench/deepspeed_trainschedule_makespan.py            # MT-NLG's shapes and a few small ones
    python bench/deepspeed_trainschedule_makespan.py 35 240 1 3  # stages, micro-batches, tf, tb
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
        (4, 8, 1, 2), (4, 8, 1, 3), (35, 240, 1, 3), (35, 192, 1, 3), (35, 160, 1, 3)]
    print(f"{'stages':>6} {'mbs':>5} {'tf':>4} {'tb':>4} {'makespan':>9} {'1f1b':>7} {'lockstep':>8}")
    for p, m, tf, tb in cases:
        p, m = int(p), int(m)
        span = makespan(p, m, tf, tb)
        print(f"{p:>6} {m:>5} {tf:>4g} {tb:>4g} {span:>9g} {(m + p - 1) * (tf + tb):>7g} "
              f"{2 * (m + p - 1) * max(tf, tb):>8g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
