#!/usr/bin/env bash
# The GPU checks session 6 (2026-12-04) left for the next device session, in one call on one H200
# (about 9 minutes; carry .whl for torchtitan, made by `bash bench/gpu_wheels.sh`):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT bash bench/gpu_pending.sh            # everything (~15 min: pass PART, one call each)
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT PART=a bash bench/gpu_pending.sh     # items 1, 2 and 4 (~6 min)
#   PYTHONPATH=/tmp/site:$PWD OUT=$OUT PART=b bash bench/gpu_pending.sh     # item 3 (~5 min)
#   PYTHONPATH=$PWD OUT=$OUT PART=c bash bench/gpu_pending.sh               # items 5 and 6 (~7 min, nothing to carry)
#
# 1. the CUDA training tests: the overlapped-steps test failed its per-step memory check in session 6
#    (-x -l keeps the values this time), its CUDA-graph case now runs one micro-batch a step, and the
#    memory-record test;
# 2. issue 15's two one-minute measurements: cuDNN/flash attention at head dim 64 vs 128 with a
#    4k-32k causal sweep, and weight-gradient GEMMs accumulating into fp32;
# 3. dense `1b` against the loop and torchtitan again, with the activation memory budget, for a
#    second same-run figure of session 6's table;
# 4. (session 7, issue 15) Composer's unfused AdamW loop on the llm-foundry MPT-7B/13B shards against
#    fused AdamW and the cost model's 92 bytes a parameter (bench/composer_adamw_host.py, < 1 min);
# 5. (session 7, issue 15) cuDNN causal attention on the H200 from 1k to 64k tokens at head dim 64 and 128,
#    against the cost model's new sequence curve (about 3 min), and the flex + sink attention of the GPT-OSS
#    rows against cuDNN and the model (bench/flex_sink_attention_vs_model.py, --mode default: 1-2 min).
# 7. (session 8, issue 12) the MoE layer's default, atomic-free (train.deterministic) and torch-deterministic
#    dispatch/combine: time and bit-reproducibility (bench/moe_combine_determinism.py, under 1 min; in PART=a).
# 6. (session 8, issue 15) what dropout costs on the H200: Megatron's bias-dropout-add (eager and compiled) at
#    p = 0.1 against p = 0, and SDPA's flash / efficient / cuDNN / math backends with dropout_p 0, 0.1 and
#    0.125 at the Megatron-LM 1.7B and GPT-3 175B rows' attention shapes (bench/dropout_cost.py, under 2 min).
# Left by session 11 (2026-12-05, which ran on an H100: no H200 could be started): PART=a's CUDA training tests did
# not run; `--ablations act-budget-1.0` and a 1b-moe run with train.activation_memory_budget=0.98 (MoE models keep
# 1.0 under auto until measured); FlashAttention-4 with `FA4=1 bash bench/gpu_wheels.sh` and bench/fa4_vs_sdpa.py
# (two calls of one lease: see gpu_wheels.sh); the whole vs_peers bench again on an H200.
# Session 12 (2026-12-05, an H100 again) ran PART=a's CUDA training tests (3 passed), the GPU attention tests (10
# passed), FlashAttention-4 (slower than cuDNN through SDPA at both shapes) and the MoE activation budget (0.98 is now
# auto for MoE too). Left: every figure on an H200 (the device: the whole vs_peers bench in two calls,
# `--sections dense --ablations act-budget-1.0 --profile-steps 3` then `--sections moe,long,attention --profile-steps 3`).
# Left by session 15 (2026-12-06, H100): PART=d, one call (~9 min), not in the default PART: the CUDA tests of
# train.bf16_weights with session 15's bias-correction fix (the compiled update against the eager one, and the trainer
# with auto on CUDA against a run without), then the dense levers with bf16 weights on; if the tests pass,
# train.bf16_weights defaults to auto (docs/performance.md "Session 15").
# Session 16 (2026-12-06) got no device (every start failed or was refused) and added to PART=d: session 16's fused
# loss against session 15's, compiled, at the 1b shape (bench/fused_loss_passes.py, under a minute), and PART=e (one
# call, ~8 min, after PART=d has passed and train.bf16_weights defaults to auto): every contender of issue 12 in one
# run with profiles, the numbers its closing note asks for (on an H200 where one comes).
# Session 17 (H200) ran PART=d (the CUDA tests passed: train.bf16_weights is auto now) and PART=e without its
# fused-projections row (-2.9% with bf16 weights in PART=d); results in docs/performance.md. PART=d's levers now also
# run together (an ablation `a+b` turns both in one run), within what is left of the call's 600 s.
set -u
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
PART=${PART:-abc}
step() { echo "===== $*"; "$@"; echo "===== rc=$? ($1 ...)"; }
if [[ $PART == *a* ]]; then
step timeout 240 python3 -m pytest -x -l -q -rs -m gpu tests/test_train.py -k on_cuda 2>&1 | tail -60
step timeout 120 python3 bench/attention_headdim_vs_model.py "$OUT/attention"
step timeout 90 python3 bench/wgrad_accumulate_vs_model.py "$OUT/wgrad"
step timeout 90 python3 bench/composer_adamw_host.py "$OUT/composer"
step timeout 120 python3 bench/moe_combine_determinism.py "$OUT/moe"
fi
if [[ $PART == *c* ]]; then
step timeout 240 python3 bench/attention_headdim_vs_model.py "$OUT/attention-seq" --long-seqs 1024 2048 4096 8192 16384 32768 65536 --long-head-dims 64 128
step timeout 240 python3 bench/flex_sink_attention_vs_model.py "$OUT/flex" --iters 10 --mode default
step timeout 150 python3 bench/dropout_cost.py "$OUT/dropout" --budget-s 110
fi
if [[ $PART == *b* ]]; then
step timeout 300 python3 bench/vs_peers.py "$OUT/peers" --sections dense --ablations act-budget-0.9 \
    --only "loop compile,torchtitan,alphaexa,alphaexa act-budget-0.9" --budget-s 280
fi
if [[ $PART == *d* ]]; then
step timeout 200 python3 -m pytest -l -q -rs -m gpu tests/test_bf16_weights.py 2>&1 | tail -30
step timeout 120 python3 bench/fused_loss_passes.py
left=$((575 - SECONDS))  # one call's 600 s, whatever the steps above took (run PART=d alone: SECONDS counts them all)
(( left < 90 )) && { echo "===== PART=d's levers skipped: ${left} s of the call's 575 left"; left=0; }
(( left > 0 )) &&
step timeout $left python3 bench/vs_peers.py "$OUT/dense-levers" --sections dense --kinds alphaexa \
    --alphaexa-set train.bf16_weights=true --budget-s $((left - 15)) \
    --ablations fused-projections,coordinate-descent,fused-projections+coordinate-descent
fi
if [[ $PART == *e* ]]; then
step timeout 570 python3 bench/vs_peers.py "$OUT/one-run" --sections dense,moe --profile-steps 3 --budget-s 555 \
    --only "loop compile,torchtitan,alphaexa,torchtitan 1b-moe,alphaexa 1b-moe,torchtitan mixtral-like,alphaexa mixtral-like"
fi
