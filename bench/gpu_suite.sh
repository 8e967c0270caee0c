#!/usr/bin/env bash
# Runs the GPU checks and benchmarks in one go on an NVIDIA machine, logging each
# section to $OUT (or ./gpu-logs).  Usage: bench/gpu_suite.sh SECTION...
# Sections: env backends model calibrate checkpoint parallel parallel-fp32 deepspeed train launchers
# Works on a machine whose python already has torch (no venv needed): the working
# tree goes on PYTHONPATH and an `alphaexa` shim is put on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out" /tmp/alphaexa-bin
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The shim names the interpreter by its full path: Open MPI's mpiexec puts its own
# prefix (/usr/bin) first on PATH, where a python3 without torch may live.
printf '#!/bin/sh\nexec %s -m alphaexa "$@"\n' "$(command -v python3)" > /tmp/alphaexa-bin/alphaexa
chmod +x /tmp/alphaexa-bin/alphaexa
export PATH="/tmp/alphaexa-bin:$PATH"
# The GPU machines run commands as root; Open MPI refuses root unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ngpu=$(python3 -c 'import torch; print(torch.cuda.device_count())')
status=0
run() {  # run NAME CMD...: log to $out/NAME.log, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || status=1
}
for section in "$@"; do
  case $section in
    env) run env sh -c 'nvidia-smi; nvidia-smi topo -m; python3 -c "import torch; print(torch.__version__)"; alphaexa env --json' ;;
    backends) run backends python3 bench/gpu_backends.py
              run attention-tests python3 -m pytest -q -m gpu tests/test_attention.py
              run graph-breaks sh -c 'python3 bench/graph_breaks.py --preset 1b && python3 bench/graph_breaks.py --preset 1b-moe' ;;
    model) run model python3 bench/gpu_model.py ;;
    calibrate) run calibrate python3 bench/gpu_calibrate.py --capture-topo "$out/nvidia-smi-topo.txt" --out "$out/calibrate.json" ;;
    checkpoint) run checkpoint python3 bench/checkpoint_speed.py --params 1B --modes sync,thread,process --repeats 2 --dir /tmp/ckpt-bench ;;
    parallel) run parallel torchrun --nproc-per-node "$ngpu" bench/gpu_parallel.py ;;
    train) run train python3 bench/gpu_train.py ;;
    parallel-fp32) run parallel-fp32 torchrun --nproc-per-node "$ngpu" bench/gpu_parallel.py --dtype float32 ;;
    deepspeed) run deepspeed torchrun --nproc-per-node 2 bench/gpu_deepspeed.py --nvme-dir /tmp/alphaexa-nvme ;;
    launchers) run launchers python3 bench/gpu_launchers.py ;;
    *) echo "unknown section $section" >&2; status=2 ;;
  esac
done
exit $status
