#!/usr/bin/env bash
# The GPU measurements behind bench/results/gpu_*.json (see bench/results/README.md), in two phases so
# that the long CUDA build of llama.cpp overlaps the PyTorch reference:
#
#   bench/gpu_run.sh start   # background: native/build.sh cuda $CUDA_ARCH, random Qwen3-8B F16 GGUF;
#                            # foreground: the PyTorch bf16 reference per stage (bench/gpu_reference.py)
#   bench/gpu_run.sh llama   # waits for both, quantizes to Q8_0 and Q4_K_M, runs llama-bench on all three
#
# and for the runtime's own decoder on that build (no PyTorch reference needed):
#
#   bench/gpu_run.sh build   # foreground: the CUDA build and the F16 GGUF side by side
#   bench/gpu_run.sh tests   # gamma-rt ask on a tiny bundle, decoder on the GPU, against --gpu-layers 0
#   bench/gpu_run.sh runtime # quantizes to Q4_K_M, then bench/gpu_decoder.py: DecoderSession vs the raw loop
#                            # vs llama-bench, F16 and Q4_K_M, all layers offloaded
#
# Knobs: BATCH (windows per audio-side call in the PyTorch run, default 1), QUANTS (default "Q8_0 Q4_K_M"),
# DEPTHS (KV-cache depths for llama-bench, default 0; 15000 = 10 min of audio), RESULT_SUFFIX.
#
# Needs a CUDA GPU, nvcc, cmake, python3 with torch + transformers, and ~40 GB of disk under $GAMMA_GPU_WORK.
# GAMMA_NATIVE_SDIST may name the llama-cpp-python sdist tarball (otherwise native/build.sh pip-downloads it).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${GAMMA_GPU_WORK:-$repo/native-build/gpu-work}"
out="${GAMMA_GPU_OUT:-$repo/bench/results}"
arch="${CUDA_ARCH:-90}"
cores="$(nproc)"
mkdir -p "$work" "$out"
out="$(cd "$out" && pwd)"
# Run from the work folder: in the repo root, ./gamma_rt would shadow the shim below.
cd "$work"

# gamma_rt importable without installing: the stage folders are its subpackages (as pyproject maps them).
shim="$work/shim/gamma_rt"
if [ ! -d "$shim" ]; then
  mkdir -p "$shim"
  ln -s "$repo"/gamma_rt/*.py "$shim/"
  for stage in export runtime quant bench; do ln -s "$repo/$stage" "$shim/$stage"; done
fi
export PYTHONPATH="$work/shim${PYTHONPATH:+:$PYTHONPATH}"

src="$work/src"
if [ ! -d "$src" ]; then
  mkdir -p "$src"
  if [ -n "${GAMMA_NATIVE_SDIST:-}" ]; then tar -xzf "$GAMMA_NATIVE_SDIST" -C "$src"
  else python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$src" && tar -xzf "$src"/*.tar.gz -C "$src"; fi
fi
sdist="$(ls -d "$src"/llama_cpp_python-*/ | head -1)"
gguf_py="$sdist/vendor/llama.cpp/gguf-py"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
tag="$(echo "$gpu" | tr 'A-Z' 'a-z' | sed 's/nvidia //' | awk '{print $1}')"

case "${1:-}" in
  start)
    nvidia-smi > "$work/nvidia-smi.txt"
    # Cores 0-1 stay free for the PyTorch run: its decode timing is bound by Python's kernel launches.
    busy="2-$((cores - 1))"
    taskset -c "$busy" setsid nohup bash -c "
      start=\$(date +%s); JOBS=$((cores - 2)) GAMMA_NATIVE_SDIST='$sdist' '$repo/native/build.sh' cuda $arch > '$work/build.log' 2>&1
      echo \$? > '$work/build.rc'; echo \$((\$(date +%s) - start)) > '$work/build.seconds'" > /dev/null 2>&1 &
    taskset -c "$busy" setsid nohup bash -c "
      PYTHONPATH='$gguf_py' python3 '$repo/bench/random_gguf.py' '$work/qwen3-8b-f16.gguf' --preset full > '$work/gguf.log' 2>&1
      echo \$? > '$work/gguf.rc'" > /dev/null 2>&1 &
    taskset -c 0,1 python3 -m gamma_rt.bench.gpu_reference --preset full --batch "${BATCH:-1}" --out "$out"
    ;;
  llama)
    for f in build gguf; do
      while [ ! -f "$work/$f.rc" ]; do sleep 5; done
      [ "$(cat "$work/$f.rc")" = 0 ] || { tail -30 "$work/$f.log"; echo "$f failed" >&2; exit 1; }
    done
    bin="$repo/native-build/cuda-sm$arch/bin"
    quants="${QUANTS:-Q8_0 Q4_K_M}"
    for q in $quants; do
      lower="$(echo "$q" | tr 'A-Z' 'a-z')"
      [ -f "$work/qwen3-8b-$lower.gguf" ] || "$bin/llama-quantize" "$work/qwen3-8b-f16.gguf" "$work/qwen3-8b-$lower.gguf" "$q" "$cores" > "$work/quantize-$lower.log" 2>&1
    done
    # The bandwidth floor uses the copy rate measured by the PyTorch run on this same machine.
    bw="$(python3 -c "import json,glob; print(json.load(open(sorted(glob.glob('$out/gpu_*_torch_reference_full_b*.json'))[0]))['measured_chip_rates']['copy_tb_per_s']*1000)")"
    GAMMA_RT_NATIVE="$repo/native-build/cuda-sm$arch" PYTHONPATH="$PYTHONPATH:$gguf_py" python3 -m gamma_rt.bench.llama_bench \
      "$work"/qwen3-8b-f16.gguf $(for q in $quants; do echo "$work/qwen3-8b-$(echo "$q" | tr 'A-Z' 'a-z').gguf"; done) \
      --ngl 99 --n-prompt 750 --n-gen 128 --repetitions 5 --depths "${DEPTHS:-0}" --bandwidth-gbs "$bw" --device "$gpu" \
      --out "$out/gpu_${tag}_llama_bench_qwen3_8b_random${RESULT_SUFFIX:-}.json"
    echo "CUDA build of llama.cpp took $(cat "$work/build.seconds") s on $((cores - 2)) cores"
    ;;
  build)
    nvidia-smi > "$work/nvidia-smi.txt"
    start=$(date +%s)
    PYTHONPATH="$PYTHONPATH:$gguf_py" python3 "$repo/bench/random_gguf.py" "$work/qwen3-8b-f16.gguf" --preset full \
      > "$work/gguf.log" 2>&1 &
    JOBS="$cores" GAMMA_NATIVE_SDIST="$sdist" "$repo/native/build.sh" cuda "$arch" > "$work/build.log" 2>&1 \
      || { tail -30 "$work/build.log"; exit 1; }
    echo "CUDA build of llama.cpp took $(($(date +%s) - start)) s on $cores cores"
    wait $! || { tail -30 "$work/gguf.log"; exit 1; }
    ;;
  tests|runtime)
    # llama-cpp-python's Python package from the same sdist, on the CUDA libraries just built
    export LLAMA_CPP_LIB_PATH="$repo/native-build/cuda-sm$arch/bin" GAMMA_RT_NATIVE="$repo/native-build/cuda-sm$arch"
    export PYTHONPATH="$PYTHONPATH:$sdist:$gguf_py"
    if [ "$1" = tests ]; then
      # torch and this CUDA build of llama.cpp cannot share a process on the CUDA 13 image (see gamma_rt/cli.py),
      # so the tiny bundle is made by the export commands, then asked about by the runtime, each its own process.
      d="$work/cli-check"; rm -rf "$d"; mkdir -p "$d"
      python3 -m gamma_rt.cli init --preset tiny --out "$d/ckpt" > "$d/export.log"
      python3 -m gamma_rt.cli export onnx "$d/ckpt" --out "$d/bundle" >> "$d/export.log"
      python3 -m gamma_rt.cli export gguf "$d/ckpt" --out "$d/bundle" >> "$d/export.log"
      python3 -c 'import sys, numpy as np, soundfile as sf; t = np.arange(16000 * 40) / 16000
sf.write(sys.argv[1], (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t)).astype("float32"), 16000)' "$d/song.wav"
      for ngl in default 0; do
        extra=(); [ "$ngl" = default ] || extra=(--gpu-layers "$ngl")
        python3 -m gamma_rt.cli ask "$d/bundle" "$d/song.wav" -q "What genre is this?" -q "Tempo?" --max-tokens 24 \
          --json -v "${extra[@]}" > "$d/ask-$ngl.json" 2> "$d/ask-$ngl.err" || { cat "$d/ask-$ngl.err"; exit 1; }
        grep "^decoder:" "$d/ask-$ngl.err"
      done
      python3 -c 'import json, sys
a, b = (json.load(open(f))["answers"] for f in sys.argv[1:])
same = [x["answer"] == y["answer"] for x, y in zip(a, b)]
print("answers with every layer on the GPU equal the CPU answers:", same)
sys.exit(0 if all(same) else 1)' "$d/ask-default.json" "$d/ask-0.json"
    else
      q4="$work/qwen3-8b-q4_k_m.gguf"
      [ -f "$q4" ] || "$repo/native-build/cuda-sm$arch/bin/llama-quantize" "$work/qwen3-8b-f16.gguf" "$q4" Q4_K_M "$cores" \
        > "$work/quantize-q4_k_m.log" 2>&1
      python3 -m gamma_rt.bench.gpu_decoder "$work/qwen3-8b-f16.gguf" "$q4" --device "$gpu" \
        --out "$out/gpu_${tag}_runtime_decoder_qwen3_8b_random.json"
    fi
    ;;
  *) echo "usage: bench/gpu_run.sh start|llama|build|tests|runtime" >&2; exit 2 ;;
esac
