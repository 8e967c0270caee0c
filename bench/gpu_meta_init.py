"""One H200: ``7b`` built on the meta device, materialised on the GPU, 20 training steps, against
the whole-model path; time from launch to the first step and peak memory.

    python3 bench/gpu_meta_init.py --out $OUT          # 7b, bf16 compute, seq 2048, mbs 2, full recompute
    python3 bench/gpu_meta_init.py --model debug --device cpu --dtype fp32 --seq-len 32 --steps 3 --out DIR
                                                       # the plumbing, on a CPU

Fits: ``alphaexa plan --model 7b --system h200-x1 --global-batch 2 --seq-len 2048 --mbs 2
--recompute full --offload none`` puts 7b's whole state on one H200 (fp32 master weights, fp32
gradients, AdamW's two moments: 100.5 GiB) with 105.2 GiB in all (activations 2.8, overhead 2.0)
of 141 GiB; without recompute at mbs 2 it predicts 122.4 GiB.  So 7b is the model here and no
smaller preset is needed.

The measurement is bench/meta_init_memory.py's with these defaults (one rank, the trainer's
`parallelize` of a one-rank layout with bf16 compute): both paths run in their own
process, one after the other; nothing is saved to disk.  On one GPU the paths hold the same
single copy of the weights, so their device peaks should agree; what differs is where and when
the initialisation runs (the whole model before ``parallelize`` vs each shard after it).
"""
from __future__ import annotations

from meta_init_memory import main

if __name__ == "__main__":
    main(description=__doc__.splitlines()[0], model="7b", nproc=1, device="cuda", dtype="bf16", seq_len=2048,
         mbs=2, recompute="full", steps=20, stagger=False)
