#!/usr/bin/env bash
# `alphaexa train` with parallel.engine=deepspeed on one GPU (the H200 image: no libaio, no registry):
# ZeRO-3 with parameters and optimizer state on NVMe for 5 steps, the same run stopped at step 3, and
# its resume, again with offload=nvme (alphaexa/parallel/deepspeed_resume.py restores what DeepSpeed
# 0.19.8's NVMe load drops).  The debug model widened (d_model 128, d_ff 512, moe_d_ff 256) so that its
# weight-decay optimizer sub-group swaps to the disk (DeepSpeed swaps sub-groups of 1 MiB or more) and
# its norms' stays in host memory: both ways of restoring run.  Prints both loss histories, the swap
# files of the checkpoint, and the largest relative difference (bitwise on CPU; GPU kernels with
# atomics may differ in the last bits even between two uninterrupted runs).
#   OUT=/tmp/out bash bench/gpu_ds_train.sh       # from the repository root, .whl/ and .deb/ carried
set -euo pipefail
OUT=${OUT:-/tmp/alphaexa-ds-train}
PY=${PYTHON:-python3}        # the CPU check here: PYTHON=/work/main/.venv/bin/python DEVICE=cpu
DEVICE=${DEVICE:-cuda}
AIO=/tmp/alphaexa-libaio
if [ ! -e /usr/include/libaio.h ]; then
  for deb in .deb/libaio*.deb; do dpkg -x "$deb" "$AIO"; done
  LIB=$AIO/usr/lib/x86_64-linux-gnu
  ln -sf "$(cd "$LIB" && ls libaio.so.1* | head -1)" "$LIB/libaio.so"
  export CPATH=$AIO/usr/include${CPATH:+:$CPATH} LIBRARY_PATH=$LIB${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ! $PY -c "import deepspeed" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore
$PY -m alphaexa.parallel.deepspeed_ops --device "$DEVICE"  # compiles cpu_adam, pin_memory, async_io once
NVME=/tmp/alphaexa-nvme-train
SETS=(--set parallel.engine=deepspeed --set parallel.sharding=zero3 --set parallel.offload=nvme
      --set "parallel.nvme_path=$NVME" --set train.steps=5 --set checkpoint.every=3 --set train.eval_batches=0
      --set train.dtype=bf16 --set data.cache_dir=/tmp/alphaexa-data
      --set model.d_model=128 --set model.d_ff=512 --set model.moe_d_ff=256)
rm -rf "$OUT/straight" "$OUT/resumed" "$NVME"
$PY -m alphaexa train --config configs/debug.toml --run-dir "$OUT/straight" "${SETS[@]}"
$PY -m alphaexa train --config configs/debug.toml --run-dir "$OUT/resumed" "${SETS[@]}" --stop-at 3
ls -l "$OUT"/resumed/checkpoints/step_000003/zero/offloaded_tensors/rank*/*.swp  # fails if nothing swapped
$PY -m alphaexa train --run-dir "$OUT/resumed" --resume
$PY - "$OUT" <<'PY'
import json, sys
def history(run):
    return [(r["loss"], r["grad_norm"], r["mem_gib"]) for r in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl"))
            if "grad_norm" in r]
a, b = history("straight"), history("resumed")
print("straight (loss, grad_norm, mem_gib):", a)
print("resumed  (loss, grad_norm, mem_gib):", b)
print("max relative difference of loss/grad_norm:",
      max(abs(x - y) / abs(y) for p, q in zip(a, b) for x, y in zip(p[:2], q[:2])), "bitwise:", [p[:2] for p in a] == [q[:2] for q in b])
PY
