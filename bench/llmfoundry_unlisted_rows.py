"""The cost model on llm-foundry benchmark rows that are NOT in topology/data/published_runs.json (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/llmfoundry_unlisted_rows.py

The file takes the 7b-70b rows of llm-foundry's scripts/train/benchmarking/README.md at sequence <= 8192 (A100-40GB:
2048 only).  The same README holds, and its history held, more rows of the same models and code versions:

* April 2023 (mosaicml/examples 9fa3ceb, release/v0.0.4, torch 1.13.1, precision bf16, FSDP PURE): the A100-40GB
  rows at 1k-8k tokens (still in the README), and the A100-80GB 7b/13b/30b rows that llm-foundry #543 (b2a43a1,
  2023-10-19) replaced (they are in b2a43a1^'s README, same micro-batch and global batch as their replacements);
* October 2023 (#543: llm-foundry v0.3.0, torch 2.1.0, amp_bf16, FSDP DEFAULT): the A100-80GB 30b row at 8k.

They are costed like their in-file siblings.  Nothing here is fitted or enters a reported figure; the printout
tells a model change that moves the file's rows whether the same code versions elsewhere agree (docs/planner.md,
"Session 7: llm-foundry rows").
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import validation as v

PURE, DEFAULT = "llm-foundry", "llm-foundry+fp32-reduce"
# (label, in-file row whose system the row shares, model, GPUs, micro-batch, global batch, sequence, T/s, implementation)
ROWS = [
    ("A100-40GB 7b s8192 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-7b", 8, 3, 96, 8192, 23098, PURE),
    ("A100-40GB 7b s4096 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-7b", 8, 6, 192, 4096, 26930, PURE),
    ("A100-40GB 7b s1024 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-7b", 8, 24, 768, 1024, 30833, PURE),
    ("A100-40GB 13b s8192 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-13b", 8, 1, 128, 8192, 11258, PURE),
    ("A100-40GB 13b s4096 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-13b", 8, 2, 256, 4096, 12830, PURE),
    ("A100-40GB 13b s1024 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-13b", 8, 8, 1024, 1024, 13817, PURE),
    ("A100-80GB 7b s8192 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 8, 128, 8192, 23887, PURE),
    ("A100-80GB 7b s4096 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 16, 256, 4096, 27973, PURE),
    ("A100-80GB 7b s1024 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 64, 1024, 1024, 32243, PURE),
    ("A100-80GB 13b s8192 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-13b", 8, 5, 120, 8192, 13531, PURE),
    ("A100-80GB 13b s4096 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-13b", 8, 10, 240, 4096, 15339, PURE),
    ("A100-80GB 13b s1024 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-13b", 8, 40, 960, 1024, 17315, PURE),
    ("A100-80GB 30b s8192 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-30b", 8, 1, 168, 8192, 4977, PURE),
    ("A100-80GB 30b s4096 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-30b", 8, 1, 168, 4096, 6227, PURE),
    ("A100-80GB 30b s1024 (Apr 2023, replaced)", "mpt-a100-80gb-7b-8-s1024", "mpt-30b", 8, 6, 1008, 1024, 7010, PURE),
    ("A100-80GB 30b s8192 (Oct 2023, not in file)", "mpt-a100-80gb-7b-8-s1024", "mpt-30b", 8, 1, 168, 8192, 4594,
     DEFAULT),
]


def main() -> int:
    runs = {r.id: r for r in v.load_runs()}
    print(f"{'row (not in the data file)':46s} {'measured s':>10s} {'predicted s':>11s} {'error':>7s}")
    for label, sibling, model, gpus, mbs, gb, seq, tps, impl in ROWS:
        run = replace(runs[sibling], id=label, model=model, gpus=gpus, mbs=mbs, global_batch=gb, seq_len=seq,
                      measured=tps, implementation=impl, split="heldout", note="diagnostic")
        est = v.predict(run)
        print(f"{label:46s} {run.measured_step_s:10.2f} {est.step_time_s:11.2f} {v.error_pct(run, est):+6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
