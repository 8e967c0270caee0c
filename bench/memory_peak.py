"""What is live at a run's peak of allocated CUDA memory, from a ``debug.memory_snapshot`` record.

    python3 bench/memory_peak.py SNAPSHOT.pickle [--top 25] [--json OUT.json]

The trainer's ``debug.memory_snapshot=true`` (``bench/vs_peers.py --alphaexa-set
debug.memory_snapshot=true`` keeps it as OUT_DIR/memory-NAME-rank_R.pickle) writes torch's
allocator record: every allocation and free with its stack.  This replays the device trace
(``alloc`` adds a block, ``free_completed`` takes it away, as the allocator's allocated-bytes
counter does), finds the moment allocated memory peaks and groups the blocks live then by the
innermost frame of their stack that is in AlphaExa, in a compiled graph (inductor's generated
module) or in torch's optimizer, so the peak reads as "parameters, gradients, optimizer state,
the forward's saved activations, the loss's temporaries ...".
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from collections import defaultdict
from pathlib import Path

GiB = 2**30
# A frame is named after the first of these found in its file name (innermost frame first).
OWN_FRAMES = (r"torchinductor_", r"/torch/optim/", r"/torch/distributed/fsdp/", r"/alphaexa/", r"/bench/",
              r"/torch/nn/")


def frame_label(frames: list[dict]) -> str:
    for pattern in OWN_FRAMES:
        for f in frames:
            name = f.get("filename", "")
            if re.search(pattern, name):
                short = re.sub(r"^.*?/(alphaexa|torch|bench)/", r"\1/", name)
                short = re.sub(r"^.*/torchinductor_[^/]*/.*/", "inductor:", short)
                return f"{short}:{f.get('line', '?')} {f.get('name', '')}"
    for f in frames:  # no Python frame of ours: the autograd engine's thread (gradients), or torch's own
        if "autograd" in f.get("name", "") or "autograd" in f.get("filename", ""):
            return "autograd engine (gradient buffers, backward temporaries)"
    python = [f for f in frames if f.get("filename", "").endswith(".py")]
    if python:
        return f"{python[0]['filename']}:{python[0].get('line', '?')} {python[0].get('name', '')}"
    return "(no frame recorded)"


def peak_of(snapshot: dict, device: int = 0, skip: float = 0.0) -> dict:
    """The peak of allocated bytes over the trace (its first ``skip`` fraction of events left out:
    the first steps compile and autotune) and the blocks live at it, grouped by frame label."""
    traces = snapshot.get("device_traces") or []
    if device >= len(traces) or not traces[device]:
        raise SystemExit(f"no allocation trace for device {device} in the snapshot: was the run's "
                         "debug.memory_snapshot on, on a CUDA device?")
    trace = traces[device]
    peak, peak_at, orphan_frees = _replay(trace, first=int(skip * len(trace)))
    live = _replay(trace, stop=peak_at)  # second pass: the blocks live at the peak
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for block in live.values():
        g = groups[frame_label(block.get("frames") or [])]
        g[0] += 1
        g[1] += block["size"]
    ordered = sorted(groups.items(), key=lambda kv: -kv[1][1])
    return {"peak_gib": peak / GiB, "event": peak_at, "events": len(trace),
            "truncated": orphan_frees > 0, "orphan_free_gib": orphan_frees / GiB,
            "groups": [{"where": k, "blocks": v[0], "gib": v[1] / GiB} for k, v in ordered]}


def _replay(trace: list[dict], stop: int | None = None, first: int = 0):
    """Without ``stop``: (peak bytes from event ``first`` on, its event index, bytes freed without a
    recorded allocation: a ring that lost its start). With ``stop``: the blocks live just after
    event ``stop``."""
    live: dict[int, dict] = {}
    allocated, peak, peak_at, orphan_frees = 0, -1, 0, 0
    for i, event in enumerate(trace):
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            allocated += event["size"]
        elif action == "free_completed":
            if live.pop(event["addr"], None) is None:
                orphan_frees += event["size"]
            else:
                allocated -= event["size"]
        if stop is not None:
            if i == stop:
                return live
        elif i >= first and allocated > peak:
            peak, peak_at = allocated, i
    return live if stop is not None else (peak, peak_at, orphan_frees)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--skip", type=float, default=0.5,
                    help="leave this fraction of the trace's first events out of the peak search (default "
                         "0.5: the steady steps, not the first compiled ones)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if not args.snapshot.is_file():
        ap.error(f"{args.snapshot}: no such file")
    with args.snapshot.open("rb") as f:
        snapshot = pickle.load(f)
    if not 0.0 <= args.skip < 1.0:
        ap.error(f"--skip {args.skip}: must be in [0, 1)")
    result = peak_of(snapshot, args.device, args.skip)
    print(f"{args.snapshot.name}: peak allocated {result['peak_gib']:.2f} GiB at event {result['event']:,} of "
          f"{result['events']:,}" + (f" (the trace lost its start: {result['orphan_free_gib']:.2f} GiB freed "
                                     "without a recorded allocation)" if result["truncated"] else ""))
    print(f"{'GiB':>8} {'blocks':>7}  allocated at")
    for g in result["groups"][:args.top]:
        print(f"{g['gib']:8.3f} {g['blocks']:7d}  {g['where']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
