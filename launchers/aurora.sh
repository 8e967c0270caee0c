#!/bin/bash
# AlphaExa on ALCF Aurora (PBS, 6x Max 1550 = 12 tiles per node, one rank per tile, oneCCL/XCCL).
#   submit:      launchers/aurora.sh --submit -A PROJECT --nodes 2 --config configs/tiny-moe.toml
#   or:          qsub -A PROJECT -l select=2 -v ALPHAEXA_CONFIG=$PWD/configs/tiny-moe.toml launchers/aurora.sh
#   interactive: launchers/aurora.sh --config configs/tiny-moe.toml        (inside qsub -I)
#   check:       PBS_NODEFILE=nodes.txt launchers/aurora.sh --dry-run --config configs/tiny-moe.toml
# The PBS defaults below are overridden by qsub's own flags or by --submit's.
#PBS -l select=1
#PBS -l place=scatter
#PBS -l filesystems=home:flare
#PBS -l walltime=01:00:00
#PBS -q debug
#PBS -k doe
#PBS -j oe
#PBS -N alphaexa
set -euo pipefail

AX_PROG=aurora.sh
AX_SITE=aurora
# ALCF "PyTorch on Aurora": the frameworks module carries PyTorch with XPU and oneCCL.
AX_DEFAULT_MODULES="module load frameworks"
AX_DEFAULT_FILESYSTEMS=home:flare
AX_SELECT_SUFFIX=""

# PBS runs a copy of this script from its spool directory, so the checkout is found
# from ALPHAEXA_HOME (set by --submit), the script's own place, or where qsub ran.
ax_find_home() {
  local candidate
  for candidate in "${ALPHAEXA_HOME:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${PBS_O_WORKDIR:-}"; do
    if [[ -n "${candidate}" && -r "${candidate}/launchers/lib/common.sh" ]]; then
      printf '%s' "${candidate}"
      return 0
    fi
  done
  printf '%s: error: cannot find the alphaexa checkout (launchers/lib/common.sh); set ALPHAEXA_HOME\n' "${AX_PROG}" >&2
  exit 2
}
AX_CHECKOUT="$(ax_find_home)"
# shellcheck source=launchers/lib/common.sh
source "${AX_CHECKOUT}/launchers/lib/common.sh"

ax_usage() {
  cat <<'EOF'
Usage: launchers/aurora.sh [options] [-- alphaexa-train-args]

Runs `alphaexa train` on ALCF Aurora: one rank per GPU tile, 12 per node, through
PALS mpiexec with the plan's CPU binding (the list leaves the OS cores 0 and 52
free) and a per-rank ZE_AFFINITY_MASK (set by launchers/lib/rank_env.sh from the
plan's placement).  The trainer picks the collective backend: xccl (native
torch.xpu), else ccl from oneccl_bindings_for_pytorch.
Submit it with --submit (or qsub), run it inside an interactive job, or check it
anywhere with --dry-run and a node file.

EOF
  ax_common_usage
  cat <<'EOF'

Aurora defaults and variables:
  modules        module load frameworks
  filesystems    home:flare   (qsub -l select=N -l place=scatter)
  Device visibility (see docs/launchers.md, "Device visibility on Aurora"):
  ALPHAEXA_ZE_HIERARCHY   FLAT (default; the frameworks module's mode, each tile a device,
                          ZE_AFFINITY_MASK = flat tile index 0..11) or COMPOSITE
                          (ZE_AFFINITY_MASK = gpu.tile, ALCF's gpu_tile_compact.sh form)
    ZE_ENABLE_PCI_ID_DEVICE_ORDER=1, CCL_WORKER_AFFINITY from the plan (one core per rank)
  oneCCL, ALCF's "oneCCL environment variables" (exported on every run):
    CCL_PROCESS_LAUNCHER=pmix (with PALS_PMI=pmix) CCL_ATL_TRANSPORT=mpi CCL_KVS_MODE=mpi
    CCL_KVS_CONNECTION_TIMEOUT=600 CCL_CONFIGURATION_PATH="" CCL_CONFIGURATION=cpu_gpu_dpcpp
    CCL_ALLREDUCE_SCALEOUT="direct:0-1048576;rabenseifner:1048577-max" CCL_BCAST=double_tree
    CCL_ZE_CACHE_OPEN_IPC_HANDLES_THRESHOLD=1024 CCL_KVS_USE_MPI_RANKS=1
    MPI_PROVIDER=$FI_PROVIDER; unset MPIR_CVAR_{CH4_POSIX_,CH4_,}COLL_SELECTION_TUNING_JSON_FILE
  ALCF's at-scale settings against hangs (ALPHAEXA_CCL_AT_SCALE=0 leaves them out):
    FI_MR_ZE_CACHE_MONITOR_ENABLED=0 FI_MR_CACHE_MONITOR=disabled FI_CXI_RX_MATCH_MODE=hybrid
    FI_CXI_OFLOW_BUF_SIZE=8388608 FI_CXI_DEFAULT_CQ_SIZE=1048576 FI_CXI_CQ_FILL_PERCENT=30
    INTELGT_AUTO_ATTACH_DISABLE=1 PALS_PING_PERIOD=240 PALS_RPC_TIMEOUT=240
    MPIR_CVAR_GATHERV_INTER_SSEND_MIN_PROCS=-1 CCL_ATL_SYNC_COLL=1 CCL_OP_SYNC=1
    CCL_ENABLE_AUTO_CACHE=0
  ALPHAEXA_CCL_DROP       variables to unset instead (same as ALPHAEXA_ENV_DROP)

Examples:
  launchers/aurora.sh --submit -A MyProject -q debug --nodes 2 --config configs/tiny-moe.toml
  PBS_NODEFILE=nodes.txt DRY_RUN=1 launchers/aurora.sh --config configs/tiny-moe.toml --plan plan.json
  ALPHAEXA_CCL_DROP="CCL_OP_SYNC CCL_ATL_SYNC_COLL" launchers/aurora.sh --config my.toml  (in qsub -I)
EOF
}

aurora_env() {
  AX_DROP="${ALPHAEXA_ENV_DROP:-} ${ALPHAEXA_CCL_DROP:-}"
  AX_ZE_HIERARCHY="${ALPHAEXA_ZE_HIERARCHY:-FLAT}"
  case "${AX_ZE_HIERARCHY}" in
    FLAT|COMPOSITE) ;;
    *) ax_die "ALPHAEXA_ZE_HIERARCHY=${AX_ZE_HIERARCHY}: expected FLAT or COMPOSITE" ;;
  esac
  ax_export ZE_FLAT_DEVICE_HIERARCHY "${AX_ZE_HIERARCHY}"
  # gpu_tile_compact.sh sets it: GPU ids follow PCI order, which is the socket order
  # ALCF documents (GPUs 0-2 on socket 0) and the plan's placement assumes.
  ax_export ZE_ENABLE_PCI_ID_DEVICE_ORDER 1

  ax_export CCL_PROCESS_LAUNCHER pmix
  # oneCCL asks PMIx for its local ranks: make PALS start the ranks with PMIx too
  # (ALCF's multi-CCS example passes the same as mpiexec --pmi=pmix).
  ax_export PALS_PMI pmix
  ax_export CCL_ATL_TRANSPORT mpi
  ax_export CCL_KVS_MODE mpi
  ax_export CCL_KVS_CONNECTION_TIMEOUT 600
  ax_export CCL_CONFIGURATION_PATH ""
  ax_export CCL_CONFIGURATION cpu_gpu_dpcpp
  ax_export CCL_ALLREDUCE_SCALEOUT "direct:0-1048576;rabenseifner:1048577-max"
  ax_export CCL_BCAST double_tree
  ax_export CCL_ZE_CACHE_OPEN_IPC_HANDLES_THRESHOLD 1024
  ax_export CCL_KVS_USE_MPI_RANKS 1
  if [[ -n "${FI_PROVIDER:-}" ]]; then
    # shellcheck disable=SC2016  # shown unexpanded in the dry run, as ALCF writes it
    ax_export MPI_PROVIDER "${FI_PROVIDER}" '$FI_PROVIDER'
  fi
  ax_unset MPIR_CVAR_CH4_POSIX_COLL_SELECTION_TUNING_JSON_FILE
  ax_unset MPIR_CVAR_CH4_COLL_SELECTION_TUNING_JSON_FILE
  ax_unset MPIR_CVAR_COLL_SELECTION_TUNING_JSON_FILE

  if [[ "${ALPHAEXA_CCL_AT_SCALE:-1}" == 1 ]]; then
    ax_export FI_MR_ZE_CACHE_MONITOR_ENABLED 0
    ax_export FI_MR_CACHE_MONITOR disabled
    ax_export FI_CXI_RX_MATCH_MODE hybrid
    ax_export FI_CXI_OFLOW_BUF_SIZE 8388608
    ax_export FI_CXI_DEFAULT_CQ_SIZE 1048576
    ax_export FI_CXI_CQ_FILL_PERCENT 30
    ax_export INTELGT_AUTO_ATTACH_DISABLE 1
    ax_export PALS_PING_PERIOD 240
    ax_export PALS_RPC_TIMEOUT 240
    ax_export MPIR_CVAR_GATHERV_INTER_SSEND_MIN_PROCS -1
    ax_export CCL_ATL_SYNC_COLL 1
    ax_export CCL_OP_SYNC 1
    # Not in the user guide: ALCF's at-scale LLM job scripts set it with CCL_OP_SYNC.
    ax_export CCL_ENABLE_AUTO_CACHE 0
  fi
}

main() {
  ax_parse_args "$@"
  if [[ "${AX_SUBMIT}" == 1 ]]; then
    ax_submit "${AX_HOME}/launchers/aurora.sh"
    return
  fi
  ax_enter_workdir
  ax_read_nodes
  ax_load_modules
  aurora_env
  ax_placement
  ax_build_mpiexec
  ax_launch
}

main "$@"
