#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels the GPU machine lacks, for its Python 3.12 image (torch 2.11,
# no package registry there).  docs/performance.md lists what each is for.  Run here, then carry .whl:
#
#   bash bench/gpu_wheels.sh
#   run(carry=[".whl"], command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#       --upgrade --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD OUT=$OUT PART=a bash bench/gpu_pending.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
WHEELS=(
  torchtitan==0.2.2 torchdata==0.11.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18 tyro==1.0.17
  docstring-parser==0.18.0 typeguard==4.6.1
  tomli-w==1.2.0 jsonschema==4.26.0 jsonschema-specifications referencing rpds-py
  torchao==0.17.0
)
"$PY" -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
ls -1 "$DEST"
du -sh "$DEST"
