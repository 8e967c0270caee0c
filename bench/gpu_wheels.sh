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

# FA4=1: also FlashAttention-4 for bench/fa4_vs_sdpa.py, which is over one call's 64 MiB: the CUDA 13 CuTe DSL library
# wheel (92 MB) is repacked with xz (63.5 MB, about 5 minutes on 2 cores) and split in two halves, .fa4a/ and .fa4b/
# (git-ignored; the small wheels go with the second). Carry .fa4a in one call of a lease and copy it to /tmp/fa4parts/
# there, then .fa4b in the next call of the same lease (the machine is given back 30 s after a call ends), and there:
#   cat /tmp/fa4parts/cu13.tar.xz.part-aa .fa4b/cu13.tar.xz.part-ab | xz -d | tar x -C /tmp/site
#   for w in .fa4b/*.whl; do python3 -m zipfile -e $w /tmp/site; done     # no unzip there; pip --target skips
#   python3 -c "import site,sys,runpy; site.addsitedir('/tmp/site'); ..."  # existing folders; the .pth needs addsitedir
# Session 11 lacked nvidia-cutlass-dsl-libs-core (the DSL's Python front end, `cutlass.cute`): it is in the list now.
if [[ ${FA4:-0} == 1 ]]; then
  FA4_DIR=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --pre --only-binary :all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$FA4_DIR" \
    flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 \
    apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 cuda-bindings
  mkdir -p "$FA4_DIR/cu13" .fa4a .fa4b
  "$PY" -m zipfile -e "$FA4_DIR"/nvidia_cutlass_dsl_libs_cu13-*.whl "$FA4_DIR/cu13"
  (cd "$FA4_DIR/cu13" && tar cf - . | xz -9e -T2 > "$FA4_DIR/cu13.tar.xz")
  split -b 32000000 "$FA4_DIR/cu13.tar.xz" "$FA4_DIR/cu13.tar.xz.part-"
  mv "$FA4_DIR/cu13.tar.xz.part-aa" .fa4a/ && mv "$FA4_DIR/cu13.tar.xz.part-ab" .fa4b/
  find "$FA4_DIR" -maxdepth 1 -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec mv {} .fa4b/ \;
  rm -rf "$FA4_DIR"
  du -sh .fa4a .fa4b
fi
