#!/usr/bin/env bash
# The GPU checks session 6 (2026-12-04) left for the next device session, in one call on one H200
# (about 9 minutes; carry .whl for torchtitan):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT bash bench/gpu_pending.sh            # everything (~10 min: may pass 600 s)
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT PART=a bash bench/gpu_pending.sh     # items 1, 2 and 4 (~6 min)
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT PART=b bash bench/gpu_pending.sh     # item 3 (~5 min)
#
# 1. the CUDA training tests: the overlapped-steps test failed its per-step memory check in session 6
#    (-x -l keeps the values this time), its CUDA-graph case now runs one micro-batch a step, and the
#    memory-record test;
# 2. issue 15's two one-minute measurements: cuDNN/flash attention at head dim 64 vs 128 with a
#    4k-32k causal sweep, and weight-gradient GEMMs accumulating into fp32;
# 3. dense `1b` against the loop and torchtitan again, with the activation memory budget, for a
#    second same-run figure of session 6's table;
# 4. (session 7, issue 15) Composer's unfused AdamW loop on the llm-foundry MPT-7B/13B shards against
#    fused AdamW and the cost model's 92 bytes a parameter (bench/composer_adamw_host.py, < 1 min).
set -u
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
PART=${PART:-ab}
step() { echo "===== $*"; "$@"; echo "===== rc=$? ($1 ...)"; }
if [[ $PART == *a* ]]; then
step timeout 240 python3 -m pytest -x -l -q -rs -m gpu tests/test_train.py -k on_cuda 2>&1 | tail -60
step timeout 120 python3 bench/attention_headdim_vs_model.py "$OUT/attention"
step timeout 90 python3 bench/wgrad_accumulate_vs_model.py "$OUT/wgrad"
step timeout 90 python3 bench/composer_adamw_host.py "$OUT/composer"
fi
if [[ $PART == *b* ]]; then
step timeout 300 python3 bench/vs_peers.py "$OUT/peers" --sections dense --ablations act-budget-0.9 \
    --only "loop compile,torchtitan,alphaexa,alphaexa act-budget-0.9" --budget-s 280
fi
