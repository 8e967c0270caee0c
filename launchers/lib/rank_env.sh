#!/bin/bash
# Per-rank wrapper, run by mpiexec in front of the program: rank_env.sh CMD [ARGS...]
#
# Narrows device visibility to this rank's device from the plan's placement, then
# execs CMD.  The launcher passes two variables (mpiexec --env):
#   ALPHAEXA_VISIBILITY_VAR  CUDA_VISIBLE_DEVICES (NVIDIA) or ZE_AFFINITY_MASK (Intel)
#   ALPHAEXA_DEVICE_LIST     one device id per local rank, ':'-separated, from
#                            the plan (Polaris "3:2:1:0", Aurora "0.0:0.1:1.0:...")
# The local rank comes from the launcher: PALS (ALCF mpiexec) sets PALS_LOCAL_RANKID,
# Cray/PMI PMI_LOCAL_RANK, MPICH hydra MPI_LOCALRANKID, Open MPI OMPI_COMM_WORLD_LOCAL_RANK.
# Errors are one line and exit 2, like the launchers.
set -euo pipefail

die() {
  printf 'rank_env.sh: error: %s\n' "$*" >&2
  exit 2
}

[[ $# -gt 0 ]] || die "usage: rank_env.sh CMD [ARGS...]"

local_rank="${PALS_LOCAL_RANKID:-${PMI_LOCAL_RANK:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-}}}}"
[[ -n "${local_rank}" ]] || die "no local rank: none of PALS_LOCAL_RANKID, PMI_LOCAL_RANK, MPI_LOCALRANKID, OMPI_COMM_WORLD_LOCAL_RANK is set (run me under mpiexec)"
[[ "${local_rank}" =~ ^[0-9]+$ ]] || die "local rank '${local_rank}' is not a non-negative integer"

if [[ -n "${ALPHAEXA_DEVICE_LIST:-}" ]]; then
  case "${ALPHAEXA_VISIBILITY_VAR:-}" in
    CUDA_VISIBLE_DEVICES|ZE_AFFINITY_MASK|ROCR_VISIBLE_DEVICES) ;;
    *) die "ALPHAEXA_VISIBILITY_VAR='${ALPHAEXA_VISIBILITY_VAR:-}': expected CUDA_VISIBLE_DEVICES or ZE_AFFINITY_MASK" ;;
  esac
  IFS=':' read -r -a devices <<<"${ALPHAEXA_DEVICE_LIST}"
  if (( local_rank >= ${#devices[@]} )); then
    die "local rank ${local_rank} has no device: ALPHAEXA_DEVICE_LIST=${ALPHAEXA_DEVICE_LIST} lists ${#devices[@]} (more ranks per node than the plan places)"
  fi
  export "${ALPHAEXA_VISIBILITY_VAR}=${devices[local_rank]}"
fi

exec "$@"
