# shellcheck shell=bash
# Shared code of the site launchers (polaris.sh, aurora.sh) and local.sh.
#
# Sourced, never executed.  A launcher sets AX_PROG (its name, for messages) and
# AX_SITE (polaris | aurora | local), defines ax_usage, sources this file, then
# calls: ax_parse_args; ax_submit (with --submit) or else ax_enter_workdir,
# ax_read_nodes, ax_load_modules, its own site environment (ax_export ...),
# ax_placement, ax_build_mpiexec, ax_launch.  local.sh uses the argument,
# environment and train-command parts only.
#
# Every user-facing failure is ONE line on stderr, "<launcher>: error: <what>",
# with exit status 2, so that a PBS output file or a terminal shows the cause
# without a trace.  Nothing here re-derives CPU or device bindings: those come
# from the plan's placement through lib/plan_env.py.

: "${AX_PROG:?the launcher sets AX_PROG before sourcing common.sh}" "${AX_SITE:?and AX_SITE}"
AX_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AX_HOME="$(cd "${AX_LIB_DIR}/../.." && pwd)"
AX_PYTHON="${ALPHAEXA_PYTHON:-python3}"

ax_die() {
  printf '%s: error: %s\n' "${AX_PROG}" "$*" >&2
  exit 2
}

ax_note() {
  printf '%s: %s\n' "${AX_PROG}" "$*" >&2
}

ax_is_dry_run() {
  [[ "${AX_DRY_RUN}" == 1 ]]
}

# Shell-quote one word for display: bare when it is plain, else in single quotes.
# A printed line pasted into bash runs exactly what the launcher runs.
ax_shq() {
  local word="$1"
  if [[ "${word}" =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then
    printf '%s' "${word}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

ax_quote() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(ax_shq "${word}")"
  done
  printf '%s' "${out}"
}

# --------------------------------------------------------------------------- help
# The options and variables every site launcher shares; each launcher prints its
# own synopsis and site variables around this.
ax_common_usage() {
  cat <<'EOF'
Options (each has an environment variable; the option wins):
  --config FILE          training config for alphaexa train        ALPHAEXA_CONFIG  (required)
  --plan FILE            plan to run (alphaexa plan --json --out)  ALPHAEXA_PLAN
                         without it a fresh plan is made for the allocated nodes from
                         the config's model.preset, train.global_batch, train.seq_len
                         (after --set), or from these, which also go to the run:
  --model NAME           model preset         (--set model.preset=NAME)  ALPHAEXA_MODEL
  --global-batch N       sequences per step   (--set train.global_batch=N) ALPHAEXA_GLOBAL_BATCH
  --seq-len N            tokens per sequence  (--set train.seq_len=N)  ALPHAEXA_SEQ_LEN
  --plan-args "ARGS"     pins for the fresh plan, e.g. "--tp 2 --pp 4"  ALPHAEXA_PLAN_ARGS
  --nodes N              plan for N nodes (default: all allocated) ALPHAEXA_NODES
  --set SECTION.KEY=V    config override for alphaexa train (repeatable)
  --run-dir DIR          run directory (default runs/SITE-JOBID)   ALPHAEXA_RUN_DIR
  --resume               resume from the run directory's last checkpoint  ALPHAEXA_RESUME=1
  --nodefile FILE        node list (default $PBS_NODEFILE)         PBS_NODEFILE
  --dry-run              print the environment, the per-node placement and the exact
                         mpiexec command; run nothing                DRY_RUN=1
  -- ARGS...             passed verbatim to alphaexa train
  -h, --help             this text

Submitting (--submit runs qsub on this launcher with these resources):
  -A, --account PROJECT  PBS project (required to submit)         ALPHAEXA_ACCOUNT
  -q, --queue QUEUE      (default debug)                           ALPHAEXA_QUEUE
  --walltime HH:MM:SS    (default 01:00:00)                        ALPHAEXA_WALLTIME
  --filesystems LIST     (default: see the site defaults below)   ALPHAEXA_FILESYSTEMS
  --job-name NAME        (default alphaexa)                        ALPHAEXA_JOB_NAME
  select= is --nodes, else the --plan's node count, else 1; place=scatter.
  The launcher's other arguments are stored NUL-separated in RUN_DIR/submit.args.

Environment (software and launch):
  ALPHAEXA_MODULES       ';'-separated setup commands run before anything else
                         (default: see below); "none" keeps the current environment
  ALPHAEXA_VENV          a virtualenv activated after the modules
  ALPHAEXA_MODULE_INIT   script that defines `module` when the shell lacks it
  ALPHAEXA_ENV_DROP      space-separated variables NOT to set (they are unset instead)
  ALPHAEXA_BIN           the alphaexa command (default: alphaexa on PATH)
  ALPHAEXA_PYTHON        python3 used to read the plan (default: python3)
  ALPHAEXA_MPIEXEC       the mpiexec command (default: mpiexec on PATH)
  ALPHAEXA_MPIEXEC_ARGS  extra mpiexec arguments, word-split (e.g. "--verbose")
  ALPHAEXA_HOME          the alphaexa checkout (found from the script, else $PBS_O_WORKDIR)
  ALPHAEXA_QSUB          the qsub command (default: qsub)

Errors are one line on stderr ("<launcher>: error: ...") with exit status 2.
EOF
}

# --------------------------------------------------------------------------- arguments
# Launcher options, each also settable by the environment variable beside it.
# Anything after "--" goes to `alphaexa train` verbatim.
# shellcheck disable=SC2034  # AX_SUBMIT is read by the launcher that sources this file
ax_parse_args() {
  AX_DRY_RUN="${DRY_RUN:-0}"
  AX_SUBMIT=0
  AX_CONFIG="${ALPHAEXA_CONFIG:-}"
  AX_PLAN="${ALPHAEXA_PLAN:-}"
  AX_RUN_DIR="${ALPHAEXA_RUN_DIR:-}"
  AX_RESUME="${ALPHAEXA_RESUME:-0}"
  AX_NODES="${ALPHAEXA_NODES:-}"
  AX_MODEL="${ALPHAEXA_MODEL:-}"
  AX_GLOBAL_BATCH="${ALPHAEXA_GLOBAL_BATCH:-}"
  AX_SEQ_LEN="${ALPHAEXA_SEQ_LEN:-}"
  AX_PLAN_ARGS="${ALPHAEXA_PLAN_ARGS:-}"
  AX_NODEFILE="${PBS_NODEFILE:-}"
  AX_ACCOUNT="${ALPHAEXA_ACCOUNT:-}"
  AX_QUEUE="${ALPHAEXA_QUEUE:-debug}"
  AX_WALLTIME="${ALPHAEXA_WALLTIME:-01:00:00}"
  AX_FILESYSTEMS="${ALPHAEXA_FILESYSTEMS:-${AX_DEFAULT_FILESYSTEMS:-}}"
  AX_JOB_NAME="${ALPHAEXA_JOB_NAME:-alphaexa}"
  # NPROC and LAUNCHER are generic names: only local.sh reads them from the environment.
  AX_NPROC=""
  AX_LAUNCHER=""
  if [[ "${AX_SITE}" == local ]]; then
    AX_NPROC="${NPROC:-}"
    AX_LAUNCHER="${LAUNCHER:-}"
  fi
  AX_SETS=()
  AX_EXTRA=()
  # A job submitted with --submit finds its arguments in the file written at submit time.
  if [[ -n "${ALPHAEXA_SUBMITTED_ARGS:-}" && $# -eq 0 ]]; then
    [[ -r "${ALPHAEXA_SUBMITTED_ARGS}" ]] || ax_die "ALPHAEXA_SUBMITTED_ARGS=${ALPHAEXA_SUBMITTED_ARGS} is not a readable file"
    local saved=() word
    while IFS= read -r -d '' word; do saved+=("${word}"); done <"${ALPHAEXA_SUBMITTED_ARGS}"
    set -- "${saved[@]}"
  fi
  AX_ARGV=("$@")
  while [[ $# -gt 0 ]]; do
    if [[ "${AX_SITE}" == local ]]; then
      case "$1" in
        --submit|--nodes|--model|--global-batch|--seq-len|--plan-args|--nodefile|-A|--account|-q|--queue|\
        --walltime|--filesystems|--job-name) ax_die "$1 is for the PBS launchers (polaris.sh, aurora.sh), not local.sh" ;;
      esac
    fi
    case "$1" in
      -h|--help) ax_usage; exit 0 ;;
      --dry-run) AX_DRY_RUN=1 ;;
      --submit) AX_SUBMIT=1 ;;
      --resume) AX_RESUME=1 ;;
      --config|--plan|--run-dir|--nodes|--model|--global-batch|--seq-len|--nodefile|--set|\
      -A|--account|-q|--queue|--walltime|--filesystems|--job-name|--nproc|--launcher|--plan-args)
        [[ $# -ge 2 ]] || ax_die "$1 needs a value (see --help)"
        case "$1" in
          --config) AX_CONFIG="$2" ;;
          --plan) AX_PLAN="$2" ;;
          --run-dir) AX_RUN_DIR="$2" ;;
          --nodes) AX_NODES="$2" ;;
          --model) AX_MODEL="$2" ;;
          --global-batch) AX_GLOBAL_BATCH="$2" ;;
          --seq-len) AX_SEQ_LEN="$2" ;;
          --plan-args) AX_PLAN_ARGS="$2" ;;
          --nodefile) AX_NODEFILE="$2" ;;
          --set) AX_SETS+=("$2") ;;
          -A|--account) AX_ACCOUNT="$2" ;;
          -q|--queue) AX_QUEUE="$2" ;;
          --walltime) AX_WALLTIME="$2" ;;
          --filesystems) AX_FILESYSTEMS="$2" ;;
          --job-name) AX_JOB_NAME="$2" ;;
          --nproc) AX_NPROC="$2" ;;
          --launcher) AX_LAUNCHER="$2" ;;
        esac
        shift ;;
      --) shift; AX_EXTRA=("$@"); break ;;
      *) ax_die "unknown option '$1' (see --help; arguments for alphaexa train go after --)" ;;
    esac
    shift
  done
  [[ "${AX_DRY_RUN}" == 0 || "${AX_DRY_RUN}" == 1 ]] || ax_die "DRY_RUN=${AX_DRY_RUN}: expected 0 or 1"
  if [[ -n "${AX_NODES}" && ! "${AX_NODES}" =~ ^[1-9][0-9]*$ ]]; then
    ax_die "--nodes ${AX_NODES}: expected a positive integer"
  fi
  if [[ "${AX_SITE}" != local && -n "${AX_NPROC}${AX_LAUNCHER}" ]]; then
    [[ -z "${AX_NPROC}" ]] || ax_die "--nproc/NPROC is for launchers/local.sh; here the plan sets the ranks"
    [[ -z "${AX_LAUNCHER}" ]] || ax_die "--launcher/LAUNCHER is for launchers/local.sh; here it is PALS mpiexec"
  fi
  if [[ -z "${AX_CONFIG}" && "${AX_RESUME}" == 1 && -n "${AX_RUN_DIR}" ]]; then
    AX_CONFIG="${AX_RUN_DIR}/config.toml"
  fi
  if [[ -z "${AX_CONFIG}" ]]; then
    ax_die "no training config: pass --config FILE (or set ALPHAEXA_CONFIG), e.g. --config configs/tiny-moe.toml"
  fi
  [[ -r "${AX_CONFIG}" ]] || ax_die "config ${AX_CONFIG} is not a readable file"
  if [[ -n "${AX_PLAN}" && ! -r "${AX_PLAN}" ]]; then
    ax_die "plan ${AX_PLAN} is not a readable file (make one with: alphaexa plan ... --json --out plan.json)"
  fi
  if [[ -z "${AX_RUN_DIR}" ]]; then
    AX_RUN_DIR="runs/${AX_SITE}-${PBS_JOBID:-$(date +%Y%m%d-%H%M%S)}"
    AX_RUN_DIR="${AX_RUN_DIR%%.*}"
  fi
}

# A batch job starts in $HOME: go where qsub was run, so relative paths hold.
ax_enter_workdir() {
  if [[ "${PBS_ENVIRONMENT:-}" == PBS_BATCH && -n "${PBS_O_WORKDIR:-}" ]]; then
    cd "${PBS_O_WORKDIR}"
  fi
}

# --------------------------------------------------------------------------- nodes
# The allocated nodes, one per line of the node file, duplicates folded (PBS may
# list a node once per chunk), order kept: rank 0 lands on the first.
ax_read_nodes() {
  if [[ -z "${AX_NODEFILE}" ]]; then
    ax_die "PBS_NODEFILE is not set: this is not inside a PBS job; submit with 'launchers/${AX_PROG} --submit -A PROJECT --config FILE' (or qsub), or dry-run with a node file: PBS_NODEFILE=nodes.txt DRY_RUN=1 launchers/${AX_PROG} --config FILE"
  fi
  [[ -r "${AX_NODEFILE}" ]] || ax_die "node file ${AX_NODEFILE} is not a readable file"
  AX_ALL_NODES=()
  local line
  declare -A seen=()
  while IFS= read -r line || [[ -n "${line}" ]]; do
    line="${line%%#*}"
    line="${line//[[:space:]]/}"
    [[ -z "${line}" || -n "${seen[${line}]:-}" ]] && continue
    seen["${line}"]=1
    AX_ALL_NODES+=("${line}")
  done <"${AX_NODEFILE}"
  [[ ${#AX_ALL_NODES[@]} -gt 0 ]] || ax_die "node file ${AX_NODEFILE} lists no nodes"
  if [[ -n "${AX_NODES}" && "${AX_NODES}" -gt ${#AX_ALL_NODES[@]} ]]; then
    ax_die "--nodes ${AX_NODES} but the job has only ${#AX_ALL_NODES[@]} node(s) in ${AX_NODEFILE}"
  fi
}

# --------------------------------------------------------------------------- software environment
# ALPHAEXA_MODULES is a ';'-separated list of commands run in order (module use,
# module load, conda activate, source ...).  ALPHAEXA_MODULES=none skips them
# (a user who set the environment up before calling the launcher).
AX_ENV_LINES=()

ax_module_available() {
  declare -F module >/dev/null 2>&1 || command -v module >/dev/null 2>&1
}

ax_load_modules() {
  local spec="${ALPHAEXA_MODULES:-${AX_DEFAULT_MODULES}}"
  local commands=() step
  if [[ "${spec}" != none ]]; then
    IFS=';' read -r -a commands <<<"${spec}"
  fi
  if [[ -n "${ALPHAEXA_VENV:-}" ]]; then
    commands+=("source ${ALPHAEXA_VENV}/bin/activate")
  fi
  AX_MODULE_COMMANDS=()
  for step in "${commands[@]}"; do
    step="$(printf '%s' "${step}" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
    [[ -n "${step}" ]] && AX_MODULE_COMMANDS+=("${step}")
  done
  ax_is_dry_run && return 0
  [[ ${#AX_MODULE_COMMANDS[@]} -gt 0 ]] || return 0
  # A batch shell that is not a login shell may lack `module`: define it from the
  # given init script, else from the usual Lmod / Environment Modules locations.
  if [[ -n "${ALPHAEXA_MODULE_INIT:-}" ]]; then
    [[ -r "${ALPHAEXA_MODULE_INIT}" ]] || ax_die "ALPHAEXA_MODULE_INIT=${ALPHAEXA_MODULE_INIT} is not a readable file"
    set +eu
    # shellcheck disable=SC1090  # the site's module init script
    source "${ALPHAEXA_MODULE_INIT}"
    set -eu
  elif ! ax_module_available; then
    local init
    for init in /usr/share/lmod/lmod/init/bash /etc/profile.d/lmod.sh /etc/profile.d/modules.sh \
                /usr/share/Modules/init/bash; do
      if [[ -r "${init}" ]]; then
        set +eu
        # shellcheck disable=SC1090  # the site's module init script
        source "${init}"
        set -eu
        break
      fi
    done
  fi
  local log
  log="$(mktemp)"
  for step in "${AX_MODULE_COMMANDS[@]}"; do
    local words=()
    read -r -a words <<<"${step}"
    if [[ "${words[0]}" == module ]] && ! ax_module_available; then
      rm -f "${log}"
      ax_die "the 'module' command is not available here (not an ALCF node?): cannot run '${step}'; set ALPHAEXA_MODULES=none to use the current environment, or ALPHAEXA_MODULE_INIT to the module init script"
    fi
    # Module and conda scripts are not written for set -u / -e: relax while they run.
    set +eu
    "${words[@]}" >"${log}" 2>&1
    local status=$?
    set -eu
    # Environment Modules (and old Lmod) can report an unknown module yet return 0.
    if [[ ${status} -eq 0 && "${words[0]}" == module ]] &&
       grep -qiE "unable to locate a modulefile|module\(s\)( or extension\(s\))? (are )?unknown|failed to load" "${log}"; then
      status=1
    fi
    if [[ ${status} -ne 0 ]]; then
      local why
      why="$(grep -v '^[[:space:]]*$' "${log}" | head -n 2 | tr -s '[:space:]' ' ')"
      why="${why% }"
      rm -f "${log}"
      ax_die "'${step}' failed${why:+: ${why}}; override the list with ALPHAEXA_MODULES='cmd1; cmd2' (see --help)"
    fi
  done
  rm -f "${log}"
}

# Export NAME=VALUE and remember it for the dry-run listing (shown as DISPLAY when
# given, e.g. with $LD_LIBRARY_PATH unexpanded), unless the user dropped NAME
# through ALPHAEXA_ENV_DROP or a site's own *_DROP list (AX_DROP).
ax_export() {
  local name="$1" value="$2" display="${3:-}" dropped
  for dropped in ${AX_DROP:-}; do
    if [[ "${dropped}" == "${name}" ]]; then
      unset "${name}"
      AX_ENV_LINES+=("unset ${name}")
      return 0
    fi
  done
  export "${name}=${value}"
  AX_ENV_LINES+=("export ${name}=${display:-$(ax_shq "${value}")}")
}

# Unset NAME (a site default that must not leak into the job).
ax_unset() {
  unset "$1"
  AX_ENV_LINES+=("unset $1")
}

# Prepend a directory to a path-list variable (LD_LIBRARY_PATH, ...).
ax_prepend_path() {
  local name="$1" dir="$2"
  local current="${!name:-}"
  ax_export "${name}" "${dir}${current:+:${current}}" "$(ax_shq "${dir}")\${${name}:+:\$${name}}"
}

# --------------------------------------------------------------------------- plan and placement
# The plan: the given file, or a fresh `alphaexa plan` for the allocated nodes.
# plan_env.py then turns the plan's placement into shell variables (AX_P_*).
ax_placement() {
  local work
  if ax_is_dry_run; then
    work="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '${work}'" EXIT
  else
    mkdir -p "${AX_RUN_DIR}"
    work="${AX_RUN_DIR}"
  fi
  AX_PLAN_COMMAND=()
  AX_PLAN_FOR_RUN="${AX_PLAN}"
  AX_PLAN_LABEL="plan ${AX_PLAN}"
  if [[ -z "${AX_PLAN}" ]]; then
    local query=(plan-args --config "${AX_CONFIG}" --prog "${AX_PROG}")
    [[ -n "${AX_MODEL}" ]] && query+=(--model "${AX_MODEL}")
    [[ -n "${AX_GLOBAL_BATCH}" ]] && query+=(--global-batch "${AX_GLOBAL_BATCH}")
    [[ -n "${AX_SEQ_LEN}" ]] && query+=(--seq-len "${AX_SEQ_LEN}")
    local kv
    for kv in "${AX_SETS[@]}"; do query+=(--set "${kv}"); done
    local model_args
    model_args="$("${AX_PYTHON}" "${AX_LIB_DIR}/plan_env.py" "${query[@]}")" || exit 2
    local words=()
    read -r -a words <<<"${model_args}"
    local nodes="${AX_NODES:-${#AX_ALL_NODES[@]}}" pins=() hosts
    read -r -a pins <<<"${AX_PLAN_ARGS}"
    hosts="$(IFS=,; printf '%s' "${AX_ALL_NODES[*]:0:${nodes}}")"
    AX_PLAN_COMMAND=("${ALPHAEXA_BIN:-alphaexa}" plan --system "${AX_SITE}" --nodes "${nodes}" "${words[@]}"
      "${pins[@]}" --hosts "${hosts}" --out "${work}/launch-plan.json")
    # An infeasible request still writes the plan file, whose advice plan_env.py reports.
    if ! "${AX_PLAN_COMMAND[@]}" >"${work}/plan.log" 2>&1 && [[ ! -s "${work}/launch-plan.json" ]]; then
      ax_die "planning failed: $(ax_quote "${AX_PLAN_COMMAND[@]}"): $(grep -v '^[[:space:]]*$' "${work}/plan.log" | tail -n 1)"
    fi
    AX_PLAN="${work}/launch-plan.json"
    AX_PLAN_FOR_RUN="${AX_RUN_DIR}/launch-plan.json"
    AX_PLAN_LABEL="the fresh plan ($(ax_quote "${AX_PLAN_COMMAND[@]:0:${#AX_PLAN_COMMAND[@]}-4}"))"
  fi
  local assignments
  assignments="$("${AX_PYTHON}" "${AX_LIB_DIR}/plan_env.py" shell --plan "${AX_PLAN}" --site "${AX_SITE}" \
    --allocated "${#AX_ALL_NODES[@]}" --ze-hierarchy "${AX_ZE_HIERARCHY:-FLAT}" --label "${AX_PLAN_LABEL}" --prog "${AX_PROG}")" || exit 2
  # plan_env.py quotes every value (shlex.quote): the assignments are data, not code.
  eval "${assignments}"
  local kv
  for kv in "${AX_P_NODE_ENV[@]}"; do ax_export "${kv%%=*}" "${kv#*=}"; done
  AX_HOSTFILE="${work}/hostfile"
  printf '%s\n' "${AX_ALL_NODES[@]:0:${AX_P_NODES}}" >"${AX_HOSTFILE}"
  AX_HOSTFILE_FOR_RUN="${AX_RUN_DIR}/hostfile"
}

# --------------------------------------------------------------------------- the train command
# The trainer copies the plan into the run directory as plan.json.
ax_train_command() {
  AX_TRAIN=("${ALPHAEXA_BIN:-alphaexa}" train --config "${AX_CONFIG}" --run-dir "${AX_RUN_DIR}")
  [[ -n "${AX_PLAN_FOR_RUN:-}" ]] && AX_TRAIN+=(--plan "${AX_PLAN_FOR_RUN}")
  local kv
  for kv in "${AX_SETS[@]}"; do AX_TRAIN+=(--set "${kv}"); done
  # The run trains what was planned: these flags win over the config and --set alike.
  [[ -n "${AX_MODEL:-}" ]] && AX_TRAIN+=(--set "model.preset=${AX_MODEL}")
  [[ -n "${AX_GLOBAL_BATCH:-}" ]] && AX_TRAIN+=(--set "train.global_batch=${AX_GLOBAL_BATCH}")
  [[ -n "${AX_SEQ_LEN:-}" ]] && AX_TRAIN+=(--set "train.seq_len=${AX_SEQ_LEN}")
  [[ "${AX_RESUME}" == 1 ]] && AX_TRAIN+=(--resume)
  AX_TRAIN+=("${AX_EXTRA[@]}")
}

# PALS mpiexec (Polaris, Aurora): one rank per device, the plan's CPU list per
# node, and the rank wrapper that narrows device visibility per local rank.
ax_build_mpiexec() {
  ax_train_command
  AX_MPIEXEC=("${ALPHAEXA_MPIEXEC:-mpiexec}" -n "${AX_P_WORLD}" --ppn "${AX_P_RANKS_PER_NODE}"
    --hostfile "${AX_HOSTFILE_FOR_RUN}" --cpu-bind "${AX_P_CPU_BIND}"
    --env "ALPHAEXA_VISIBILITY_VAR=${AX_P_VISIBILITY_VAR}"
    --env "ALPHAEXA_DEVICE_LIST=${AX_P_DEVICE_LIST}")
  local extra=()
  read -r -a extra <<<"${ALPHAEXA_MPIEXEC_ARGS:-}"
  AX_MPIEXEC+=("${extra[@]}")
  AX_MPIEXEC+=("${AX_LIB_DIR}/rank_env.sh" "${AX_TRAIN[@]}")
}

# --------------------------------------------------------------------------- dry run and launch
# The dry run prints a shell script: what would be sourced, exported and run,
# and, as comments, each node's ranks with their devices and CPUs.
ax_print_dry_run() {
  printf '# %s dry run: nothing below was executed\n' "${AX_PROG}"
  printf '# nodes: %s allocated (%s), %s used by the plan; %s ranks per node, %s ranks\n' \
    "${#AX_ALL_NODES[@]}" "${AX_NODEFILE}" "${AX_P_NODES}" "${AX_P_RANKS_PER_NODE}" "${AX_P_WORLD}"
  printf 'cd %s\n' "$(ax_shq "${PWD}")"
  local line
  for line in "${AX_MODULE_COMMANDS[@]}"; do printf '%s\n' "${line}"; done
  for line in "${AX_ENV_LINES[@]}"; do printf '%s\n' "${line}"; done
  printf 'mkdir -p %s\n' "$(ax_shq "${AX_RUN_DIR}")"
  if [[ ${#AX_PLAN_COMMAND[@]} -gt 0 ]]; then
    local shown=("${AX_PLAN_COMMAND[@]}")
    shown[${#shown[@]}-1]="${AX_PLAN_FOR_RUN}"
    printf '%s\n' "$(ax_quote "${shown[@]}")"
  fi
  "${AX_PYTHON}" "${AX_LIB_DIR}/plan_env.py" describe --plan "${AX_PLAN}" --site "${AX_SITE}" \
    --allocated "${#AX_ALL_NODES[@]}" --hosts "${AX_HOSTFILE}" --ze-hierarchy "${AX_ZE_HIERARCHY:-FLAT}" \
    --label "${AX_PLAN_LABEL}" --prog "${AX_PROG}" || exit 2
  printf "printf '%%s\\\\n' %s > %s\n" "$(ax_quote "${AX_ALL_NODES[@]:0:${AX_P_NODES}}")" "$(ax_shq "${AX_HOSTFILE_FOR_RUN}")"
  printf '%s\n' "$(ax_quote "${AX_MPIEXEC[@]}")"
}

ax_launch() {
  if ax_is_dry_run; then
    ax_print_dry_run
    return 0
  fi
  ax_note "$(ax_quote "${AX_MPIEXEC[@]}")"
  exec "${AX_MPIEXEC[@]}"
}

# --------------------------------------------------------------------------- qsub
# --submit: qsub this launcher with the PBS resources from the flags/variables;
# the launcher's own arguments travel in a NUL-separated file in the run dir.
ax_submit() {
  local script="$1"
  [[ -n "${AX_ACCOUNT}" ]] || ax_die "--submit needs a project: -A PROJECT (or ALPHAEXA_ACCOUNT)"
  local nodes="${AX_NODES:-}"
  if [[ -z "${nodes}" && -n "${AX_PLAN}" ]]; then
    nodes="$("${AX_PYTHON}" "${AX_LIB_DIR}/plan_env.py" nodes --plan "${AX_PLAN}" --site "${AX_SITE}" \
      --prog "${AX_PROG}")" || exit 2
  fi
  nodes="${nodes:-1}"
  # The job runs elsewhere and later: every path it receives must be absolute.
  local run_dir
  run_dir="$(realpath -m "${AX_RUN_DIR}")"
  local args_file="${run_dir}/submit.args"
  local forwarded=(--run-dir "${run_dir}") skip=0 word
  for word in "${AX_ARGV[@]}"; do
    if [[ ${skip} == 1 ]]; then skip=0; continue; fi
    case "${word}" in
      --) break ;;
      --submit|--dry-run) ;;
      -A|--account|-q|--queue|--walltime|--filesystems|--job-name|--run-dir|--config|--plan|--nodefile)
        skip=1 ;;
      *) forwarded+=("${word}") ;;
    esac
  done
  forwarded+=(--config "$(realpath -m "${AX_CONFIG}")")
  [[ -n "${AX_PLAN}" ]] && forwarded+=(--plan "$(realpath -m "${AX_PLAN}")")
  [[ ${#AX_EXTRA[@]} -gt 0 ]] && forwarded+=(-- "${AX_EXTRA[@]}")
  local vars="ALPHAEXA_HOME=${AX_HOME},ALPHAEXA_SUBMITTED_ARGS=${args_file}" name
  for name in ALPHAEXA_MODULES ALPHAEXA_VENV ALPHAEXA_BIN ALPHAEXA_PYTHON ALPHAEXA_ENV_DROP \
              ALPHAEXA_NCCL_DROP ALPHAEXA_CCL_DROP ALPHAEXA_CCL_AT_SCALE ALPHAEXA_ZE_HIERARCHY \
              ALPHAEXA_MPIEXEC ALPHAEXA_MPIEXEC_ARGS ALPHAEXA_MODULE_INIT ALPHAEXA_AWS_OFI_NCCL_DIR \
              ALPHAEXA_HWLOC_LIB_DIR; do
    if [[ -n "${!name:-}" ]]; then
      [[ "${!name}" != *,* ]] || ax_die "${name}=${!name} contains a comma, which qsub -v cannot carry"
      vars+=",${name}=${!name}"
    fi
  done
  [[ "${vars}" != *' '* && "${AX_HOME}${args_file}" != *,* ]] ||
    ax_die "qsub -v cannot carry a comma or a space: ${vars}"
  AX_QSUB=("${ALPHAEXA_QSUB:-qsub}" -A "${AX_ACCOUNT}" -q "${AX_QUEUE}" -l "select=${nodes}${AX_SELECT_SUFFIX:-}"
    -l place=scatter -l "walltime=${AX_WALLTIME}" -N "${AX_JOB_NAME}" -k doe -j oe)
  [[ -n "${AX_FILESYSTEMS}" ]] && AX_QSUB+=(-l "filesystems=${AX_FILESYSTEMS}")
  AX_QSUB+=(-v "${vars}" "${script}")
  if ax_is_dry_run; then
    printf '# %s --submit dry run: nothing below was executed\n' "${AX_PROG}"
    printf 'mkdir -p %s\n' "$(ax_shq "${run_dir}")"
    printf "printf '%%s\\\\0' %s > %s\n" "$(ax_quote "${forwarded[@]}")" "$(ax_shq "${args_file}")"
    printf '%s\n' "$(ax_quote "${AX_QSUB[@]}")"
    return 0
  fi
  command -v "${AX_QSUB[0]}" >/dev/null 2>&1 || ax_die "${AX_QSUB[0]} not found: submit from an ALCF login node"
  mkdir -p "${run_dir}"
  printf '%s\0' "${forwarded[@]}" >"${args_file}"
  ax_note "$(ax_quote "${AX_QSUB[@]}")"
  exec "${AX_QSUB[@]}"
}
