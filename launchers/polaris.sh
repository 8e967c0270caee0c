#!/bin/bash
# AlphaExa on ALCF Polaris (PBS, 4x A100 per node, NCCL over Slingshot).
#   submit:      launchers/polaris.sh --submit -A PROJECT --nodes 2 --config configs/tiny-moe.toml
#   or:          qsub -A PROJECT -l select=2:system=polaris -v ALPHAEXA_CONFIG=$PWD/configs/tiny-moe.toml launchers/polaris.sh
#   interactive: launchers/polaris.sh --config configs/tiny-moe.toml        (inside qsub -I)
#   check:       PBS_NODEFILE=nodes.txt launchers/polaris.sh --dry-run --config configs/tiny-moe.toml
# The PBS defaults below are overridden by qsub's own flags or by --submit's.
#PBS -l select=1:system=polaris
#PBS -l place=scatter
#PBS -l filesystems=home:eagle
#PBS -l walltime=01:00:00
#PBS -q debug
#PBS -k doe
#PBS -j oe
#PBS -N alphaexa
set -euo pipefail

AX_PROG=polaris.sh
AX_SITE=polaris
# ALCF "PyTorch on Polaris": the conda module carries PyTorch with NCCL.
AX_DEFAULT_MODULES="module use /soft/modulefiles; module load conda; conda activate"
AX_DEFAULT_FILESYSTEMS=home:eagle
AX_SELECT_SUFFIX=":system=polaris"
# ALCF "NCCL" page: the aws-ofi-nccl plugin and hwloc that NCCL_NET="AWS Libfabric" needs.
AX_AWS_OFI_NCCL_DIR="${ALPHAEXA_AWS_OFI_NCCL_DIR:-/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib}"
AX_HWLOC_LIB_DIR="${ALPHAEXA_HWLOC_LIB_DIR:-/soft/libraries/hwloc/lib/}"
# ALCF's warning: "For some applications such as Megatron-DeepSpeed, enabling AWS plugin
# will cause hang or NCCL timeout issue", cured by unsetting these four.
AX_AWS_PLUGIN_VARS="NCCL_NET_GDR_LEVEL NCCL_CROSS_NIC NCCL_COLLNET_ENABLE NCCL_NET"

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
Usage: launchers/polaris.sh [options] [-- alphaexa-train-args]

Runs `alphaexa train` on ALCF Polaris: one rank per A100, 4 per node, through PALS
mpiexec with the plan's CPU binding (--cpu-bind list:...) and per-rank
CUDA_VISIBLE_DEVICES (set by launchers/lib/rank_env.sh from the plan's placement).
Submit it with --submit (or qsub), run it inside an interactive job, or check it
anywhere with --dry-run and a node file.

EOF
  ax_common_usage
  cat <<'EOF'

Polaris defaults and variables:
  modules        module use /soft/modulefiles; module load conda; conda activate
  filesystems    home:eagle   (qsub -l select=N:system=polaris -l place=scatter)
  NCCL / libfabric, as ALCF's NCCL page documents (exported on every run):
    NCCL_NET_GDR_LEVEL=PHB NCCL_CROSS_NIC=1 NCCL_COLLNET_ENABLE=1 NCCL_NET="AWS Libfabric"
    FI_CXI_DISABLE_HOST_REGISTER=1 FI_MR_CACHE_MONITOR=userfaultfd FI_CXI_DEFAULT_CQ_SIZE=131072
    LD_LIBRARY_PATH+=aws-ofi-nccl and hwloc library directories
  ALPHAEXA_NCCL_DROP          variables to unset instead; "aws-plugin" means the four ALCF
                              names when the plugin hangs a workload (NCCL_NET_GDR_LEVEL
                              NCCL_CROSS_NIC NCCL_COLLNET_ENABLE NCCL_NET)
  ALPHAEXA_AWS_OFI_NCCL_DIR   plugin library dir (default /soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib)
  ALPHAEXA_HWLOC_LIB_DIR      hwloc library dir  (default /soft/libraries/hwloc/lib/)

Examples:
  launchers/polaris.sh --submit -A MyProject -q debug --nodes 2 --config configs/tiny-moe.toml
  PBS_NODEFILE=nodes.txt DRY_RUN=1 launchers/polaris.sh --config configs/tiny-moe.toml --plan plan.json
  ALPHAEXA_NCCL_DROP=aws-plugin launchers/polaris.sh --config my.toml      (inside qsub -I)
EOF
}

polaris_env() {
  AX_DROP="${ALPHAEXA_ENV_DROP:-} ${ALPHAEXA_NCCL_DROP:-}"
  AX_DROP="${AX_DROP//aws-plugin/${AX_AWS_PLUGIN_VARS}}"
  ax_export NCCL_NET_GDR_LEVEL PHB
  ax_export NCCL_CROSS_NIC 1
  ax_export NCCL_COLLNET_ENABLE 1
  ax_export NCCL_NET "AWS Libfabric"
  ax_export FI_CXI_DISABLE_HOST_REGISTER 1
  ax_export FI_MR_CACHE_MONITOR userfaultfd
  ax_export FI_CXI_DEFAULT_CQ_SIZE 131072
  if [[ -n "${NCCL_NET:-}" ]]; then
    if ! ax_is_dry_run && [[ ! -d "${AX_AWS_OFI_NCCL_DIR}" ]]; then
      ax_die "NCCL_NET='AWS Libfabric' needs the aws-ofi-nccl plugin but ${AX_AWS_OFI_NCCL_DIR} does not exist; set ALPHAEXA_AWS_OFI_NCCL_DIR, or ALPHAEXA_NCCL_DROP=aws-plugin to run without it"
    fi
    ax_prepend_path LD_LIBRARY_PATH "${AX_AWS_OFI_NCCL_DIR}"
    ax_prepend_path LD_LIBRARY_PATH "${AX_HWLOC_LIB_DIR}"
  fi
}

main() {
  ax_parse_args "$@"
  if [[ "${AX_SUBMIT}" == 1 ]]; then
    ax_submit "${AX_HOME}/launchers/polaris.sh"
    return
  fi
  ax_enter_workdir
  ax_read_nodes
  ax_load_modules
  polaris_env
  ax_placement
  ax_build_mpiexec
  ax_launch
}

main "$@"
