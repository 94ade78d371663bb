#!/usr/bin/env bash
# Configures, builds and runs the C++ test program (CMakeLists.txt) against the libtorch of the active Python's torch.
# A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit and nvrtc: they are pointed at
# /usr/local/cuda and at the nvrtc that the torch wheels ship. Usage: scripts/ctest.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-cmake-build}
py=${PYTHON:-python}
prefix=$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
args=(-DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release)
# No GPU to detect here: name an arch so libtorch's CUDA config does not try to run a detection program.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ "$("$py" -c 'import torch; print(torch.version.cuda is not None)')" = True ]; then
  cuda_home=${CUDA_HOME:-/usr/local/cuda}
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_home")
  nvrtc=$("$py" - <<'PY'
import glob, os, site
hits = [p for d in site.getsitepackages() for p in glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so*"))
        if "builtins" not in p and ".alt." not in p]
print(hits[0] if hits else "")
PY
)
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
# find_package(Torch) still uses the FindCUDA module, which CMake 3.27+ dropped: prefer the system cmake.
cmake_bin=${CMAKE:-$(command -v /usr/bin/cmake || command -v cmake)}
"$cmake_bin" -S . -B "$build" "${args[@]}" > "$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
"$cmake_bin" --build "$build" -j "${MAX_JOBS:-2}"
ctest --test-dir "$build" --output-on-failure
