#!/usr/bin/env bash
# Build llama.cpp (the copy inside the pinned llama-cpp-python sdist) through the top-level CMakeLists.txt.
#
#   native/build.sh cpu                 # -> native-build/cpu/bin
#   native/build.sh cuda 90             # H100/H200 -> native-build/cuda-sm90/bin
#   native/build.sh cuda 87             # Jetson Orin (on the Jetson, JetPack 6) -> native-build/cuda-sm87
#
# Environment: JOBS (parallel jobs, default 2), GAMMA_NATIVE_SDIST (a llama_cpp_python-*.tar.gz or an
# unpacked sdist folder to use instead of `pip download`), GAMMA_NATIVE_ROOT (default native-build).
# Afterwards point llama-cpp-python at the libraries:  export LLAMA_CPP_LIB_PATH=native-build/cpu/bin
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-cpu}"
arch="${2:-90}"
jobs="${JOBS:-2}"
root="${GAMMA_NATIVE_ROOT:-$here/native-build}"
# The version llama-cpp-python is pinned to in pyproject.toml: the tools and the Python binding agree.
version="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/pyproject.toml" | head -1)"
[ -n "$version" ] || { echo "native/build.sh: no llama-cpp-python==X pin in pyproject.toml" >&2; exit 2; }

case "$target" in
  cpu) build="$root/cpu"; cuda_flags=(-DGAMMA_CUDA=OFF) ;;
  cuda) build="$root/cuda-sm$arch"; cuda_flags=(-DGAMMA_CUDA=ON "-DGAMMA_CUDA_ARCH=$arch") ;;
  *) echo "native/build.sh: target must be 'cpu' or 'cuda ARCH', got '$target'" >&2; exit 2 ;;
esac

src_root="$root/sdist/llama_cpp_python-$version"
if [ ! -f "$src_root/vendor/llama.cpp/CMakeLists.txt" ]; then
  mkdir -p "$root/sdist"
  sdist="${GAMMA_NATIVE_SDIST:-}"
  if [ -d "$sdist" ]; then
    src_root="$sdist"
  else
    if [ -z "$sdist" ]; then
      python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$root/sdist"
      sdist="$root/sdist/llama_cpp_python-$version.tar.gz"
    fi
    tar -xzf "$sdist" -C "$root/sdist"
  fi
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  "-DGAMMA_LLAMA_SRC=$src_root/vendor/llama.cpp" "${cuda_flags[@]}"
cmake --build "$build" --target gamma_native -j "$jobs"
echo "built: $build/bin/{llama-bench,llama-quantize,llama-mtmd-cli,llama-server,libllama.so,libggml*.so}"
echo "use:   export LLAMA_CPP_LIB_PATH=$build/bin"
