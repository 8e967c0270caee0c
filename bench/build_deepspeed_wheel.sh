#!/usr/bin/env bash
# Build the DeepSpeed wheel that travels to the H200 image (Python 3.12, torch 2.11+cu130, no
# compiler run there): DeepSpeed's cpu_adam, async_io and pin_memory ops compiled in, for the cuda
# accelerator, with portable CPU flags.  docs/parallelism.md says why each setting is needed:
#   * DeepSpeed takes an op from the install only when git_version_info.installed_ops lists it AND the
#     accelerator recorded at build time is the running one: so DS_ACCELERATOR=cuda, on a machine with
#     no GPU, against a CUDA toolkit (CUDA_HOME) and a stub libcuda.so to link with;
#   * it also checks torch's major.minor and CUDA version: so torch 2.11.0 (PyPI's CUDA 13 build);
#   * -march=native would bake in this machine's CPU: two environment hooks are added to the sdist's
#     op_builder/builder.py (cpu_arch, simd_width) so the build uses x86-64-v3 and AVX2 instead.
#
#   bash bench/build_deepspeed_wheel.sh [OUT_DIR]          # default OUT_DIR: .whl
#   PY312_VENV=/path/to/venv bash bench/build_deepspeed_wheel.sh   # reuse a venv that has torch 2.11
#
# Needs: Python 3.12 (pyenv's, or set PY312), a CUDA toolkit at CUDA_HOME (default /usr/local/cuda),
# libaio headers (installed with apt-get when root), a C++ compiler; about 15 minutes on 2 cores.
set -euo pipefail
DS_VERSION=0.19.8
TORCH_VERSION=2.11.0
OUT_DIR=$(realpath -m "${1:-.whl}")
WORK=${WORK:-/tmp/alphaexa-ds-wheel}
PY312=${PY312:-$(command -v python3.12 || echo "$HOME/.pyenv/versions/3.12.1/bin/python3.12")}
VENV=${PY312_VENV:-$WORK/venv}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

say() { echo "build_deepspeed_wheel: $*"; }
[ -x "$PY312" ] || [ -x "$VENV/bin/python" ] || { say "no Python 3.12 (set PY312 or PY312_VENV)"; exit 2; }
[ -d "$CUDA_HOME/include" ] || { say "no CUDA toolkit at CUDA_HOME=$CUDA_HOME"; exit 2; }
if ! echo '#include <libaio.h>' | "${CC:-cc}" -E - >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! apt-get install -y -q libaio-dev >/dev/null; then
    say "libaio headers missing (apt-get install libaio-dev)"; exit 2
  fi
fi
mkdir -p "$WORK" "$OUT_DIR"
cd "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
  say "venv with torch $TORCH_VERSION (PyPI's CUDA build: a few GB)"
  "$PY312" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" setuptools wheel ninja packaging numpy psutil \
  py-cpuinfo hjson msgpack pydantic einops tqdm

say "sdist of deepspeed $DS_VERSION"
rm -rf "deepspeed-$DS_VERSION" wheel repack stub
"$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: "deepspeed==$DS_VERSION" -d .
tar xzf "deepspeed-$DS_VERSION.tar.gz"

say "portable CPU flags: environment hooks in op_builder/builder.py"
"$VENV/bin/python" - "deepspeed-$DS_VERSION/op_builder/builder.py" <<'EOF'
import sys
from pathlib import Path
path = Path(sys.argv[1])
text = path.read_text()
for method, var in (("cpu_arch", "DS_BUILD_CPU_ARCH"), ("simd_width", "DS_BUILD_SIMD_WIDTH")):
    head = f"    def {method}(self):\n"
    assert text.count(head) == 1, f"{method} not found once in {path}"
    hook = f"        if os.environ.get('{var}'):  # portable prebuilt ops (AlphaExa build)\n" \
           f"            return os.environ['{var}']\n"
    text = text.replace(head, head + hook)
path.write_text(text)
EOF

say "stub libcuda.so to link against (the driver's own is loaded at run time)"
mkdir -p stub
echo 'int cuInit(unsigned int flags) { return 0; }' | "${CC:-cc}" -shared -fPIC -x c - -o stub/libcuda.so

say "compiling the ops (minutes)"
DS_ACCELERATOR=cuda DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 DS_BUILD_AIO=1 DS_BUILD_PIN_MEMORY=1 \
DS_BUILD_CPU_ARCH=-march=x86-64-v3 DS_BUILD_SIMD_WIDTH=-D__AVX256__ \
LIBRARY_PATH="$WORK/stub${LIBRARY_PATH:+:$LIBRARY_PATH}" \
  "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps "./deepspeed-$DS_VERSION" -w wheel

say "stripping debug information"
"$VENV/bin/python" -m wheel unpack -d repack wheel/deepspeed-*.whl
find repack -name '*.so' -exec strip --strip-debug {} +
"$VENV/bin/python" -m wheel pack -d "$OUT_DIR" "repack/deepspeed-$DS_VERSION"

"$VENV/bin/python" - "$OUT_DIR" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel = max(Path(sys.argv[1]).glob("deepspeed-*-cp312-*.whl"), key=lambda p: p.stat().st_mtime)
info = zipfile.ZipFile(wheel).read("deepspeed/git_version_info_installed.py").decode()
ops = {name for name in ("cpu_adam", "async_io", "pin_memory") if f"'{name}': 1" in info}
assert ops == {"cpu_adam", "async_io", "pin_memory"} and "accelerator_name='cuda'" in info, info
print(f"build_deepspeed_wheel: {wheel} ({wheel.stat().st_size / 2**20:.1f} MiB): ops {sorted(ops)} for cuda")
EOF
