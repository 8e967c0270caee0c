#!/bin/bash
# AlphaExa on one machine (CPU or GPUs), started by torchrun or a local mpiexec.
#   LAUNCHER=mpiexec NPROC=4 launchers/local.sh --config configs/debug.toml
#   launchers/local.sh --launcher torchrun --nproc 2 --config configs/tiny-moe.toml
set -euo pipefail

AX_PROG=local.sh
AX_SITE=local
# shellcheck source=launchers/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# Variables of an enclosing torchrun (or an earlier export) that would make every
# rank believe it is the same torchrun rank instead of reading its own launcher.
AX_TORCHRUN_VARS=(RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK GROUP_WORLD_SIZE ROLE_RANK
  ROLE_WORLD_SIZE MASTER_ADDR MASTER_PORT TORCHELASTIC_RUN_ID)

ax_usage() {
  cat <<'EOF'
Usage: launchers/local.sh [options] [-- alphaexa-train-args]

Runs `alphaexa train` on this machine with NPROC ranks, started by torchrun
(--standalone) or by a local mpiexec (MPICH hydra, e.g. the mpich wheel's).  Under
mpiexec each rank finds its rank and the rendezvous address from the MPI
environment (PMI variables + mpi4py); torchrun variables left in the caller's
environment are removed first so they cannot shadow that.  With GPUs, rank i
uses local device i.

Options:
  --config FILE          training config                            ALPHAEXA_CONFIG (required)
  --plan FILE            layout from an `alphaexa plan --json` file  ALPHAEXA_PLAN
  --nproc N              ranks (default: the GPUs nvidia-smi lists, else 1)  NPROC
  --launcher NAME        torchrun (default) or mpiexec              LAUNCHER
  --set SECTION.KEY=V    config override for alphaexa train (repeatable)
  --run-dir DIR          run directory (default runs/local-TIMESTAMP)  ALPHAEXA_RUN_DIR
  --resume               continue from the run directory's last checkpoint  ALPHAEXA_RESUME=1
  --dry-run              print the environment and the command; run nothing  DRY_RUN=1
  -- ARGS...             passed verbatim to alphaexa train
  -h, --help             this text

Environment:
  ALPHAEXA_BIN           the alphaexa command (default: alphaexa on PATH)
  ALPHAEXA_MPIEXEC       mpiexec (default: on PATH, else beside alphaexa)
  ALPHAEXA_MPIEXEC_ARGS  extra mpiexec arguments, word-split
  ALPHAEXA_TORCHRUN      torchrun (default: on PATH, else beside alphaexa)
  OMP_NUM_THREADS        threads per rank (default: CPU cores / NPROC, at least 1)

Errors are one line on stderr ("local.sh: error: ...") with exit status 2.
EOF
}

# The directory of the alphaexa command: a venv's bin also holds its mpiexec/torchrun.
local_tool() {
  local name="$1" override="$2" bin_dir
  if [[ -n "${override}" ]]; then
    printf '%s' "${override}"
  elif command -v "${name}" >/dev/null 2>&1; then
    command -v "${name}"
  else
    bin_dir="$(dirname "$(command -v "${ALPHAEXA_BIN:-alphaexa}" 2>/dev/null || echo .)")"
    [[ -x "${bin_dir}/${name}" ]] || ax_die "${name} not found on PATH nor beside ${ALPHAEXA_BIN:-alphaexa}; set ALPHAEXA_$(tr '[:lower:]' '[:upper:]' <<<"${name}")"
    printf '%s' "${bin_dir}/${name}"
  fi
}

local_nproc() {
  if [[ -n "${AX_NPROC}" ]]; then
    [[ "${AX_NPROC}" =~ ^[1-9][0-9]*$ ]] || ax_die "NPROC=${AX_NPROC}: expected a positive integer"
    printf '%s' "${AX_NPROC}"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi -L | grep -c '^GPU'
  else
    printf '1'
  fi
}

main() {
  ax_parse_args "$@"
  local launcher="${AX_LAUNCHER:-torchrun}" nproc
  nproc="$(local_nproc)"

  local name
  for name in "${AX_TORCHRUN_VARS[@]}"; do
    [[ -n "${!name+set}" ]] && ax_unset "${name}"
  done
  if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    local cores
    cores="$(nproc 2>/dev/null || echo 1)"
    ax_export OMP_NUM_THREADS "$(( cores / nproc > 0 ? cores / nproc : 1 ))"
  fi

  # On one machine there is no placement to apply: a plan only carries the layout.
  AX_PLAN_FOR_RUN="${AX_PLAN}"
  ax_train_command
  local command=()
  case "${launcher}" in
    torchrun)
      command=("$(local_tool torchrun "${ALPHAEXA_TORCHRUN:-}")" --standalone --nproc-per-node "${nproc}"
        --no-python "${AX_TRAIN[@]}") ;;
    mpiexec)
      local extra=()
      read -r -a extra <<<"${ALPHAEXA_MPIEXEC_ARGS:-}"
      command=("$(local_tool mpiexec "${ALPHAEXA_MPIEXEC:-}")" -n "${nproc}" "${extra[@]}" "${AX_TRAIN[@]}") ;;
    *) ax_die "LAUNCHER=${launcher}: expected torchrun or mpiexec" ;;
  esac

  if ax_is_dry_run; then
    printf '# %s dry run: nothing below was executed\n' "${AX_PROG}"
    printf '# %s ranks on this machine through %s\n' "${nproc}" "${launcher}"
    printf 'cd %s\n' "$(ax_shq "${PWD}")"
    local line
    for line in "${AX_ENV_LINES[@]}"; do printf '%s\n' "${line}"; done
    printf '%s\n' "$(ax_quote "${command[@]}")"
    return 0
  fi
  ax_note "$(ax_quote "${command[@]}")"
  exec "${command[@]}"
}

main "$@"
