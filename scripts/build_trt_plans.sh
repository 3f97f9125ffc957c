#!/usr/bin/env bash
# Build TensorRT plans (FP16) for every member of a Triton model repository from its 1/model.onnx.
#
# Runs where `trtexec` exists: inside NVIDIA's TensorRT/Triton image (the Kubernetes init job of the Triton
# Deployment runs it there), or on a GPU host with TensorRT; with Docker and a GPU, DOCKER=1 runs it in
# nvcr.io/nvidia/tensorrt. Plans are specific to the GPU model and TensorRT version that built them, so they are
# build outputs, never committed. Usage:
#   dfguard triton build-repo --target gpu --out /models && scripts/build_trt_plans.sh /models
set -euo pipefail

REPO=${1:?usage: build_trt_plans.sh MODEL_REPOSITORY}
MAX_BATCH=${MAX_BATCH:-64}
OPT_BATCH=${OPT_BATCH:-32}
TRT_IMAGE=${TRT_IMAGE:-nvcr.io/nvidia/tensorrt:24.08-py3}

run_trtexec() {
  if [ "${DOCKER:-0}" = "1" ]; then
    docker run --rm --gpus all -v "$(cd "$REPO" && pwd)":/repo "$TRT_IMAGE" trtexec "$@"
  else
    command -v trtexec >/dev/null || { echo "build_trt_plans: trtexec not found (run in NVIDIA's image, or DOCKER=1)" >&2; exit 2; }
    trtexec "$@"
  fi
}

built=0
for config in "$REPO"/*/config.pbtxt; do
  member=$(dirname "$config")
  name=$(basename "$member")
  grep -q 'platform: "tensorrt_plan"' "$config" || continue
  onnx="$member/1/model.onnx"
  [ -f "$onnx" ] || { echo "build_trt_plans: $onnx missing (build the repo without --configs-only)" >&2; exit 2; }
  # input name and per-crop dims from the member's own config: input [ { name: "X" ... dims: [ a, b, c ] } ]
  input=$(sed -n 's/^input \[ { name: "\([^"]*\)".*/\1/p' "$config")
  dims=$(sed -n 's/^input \[ {.*dims: \[ \([0-9, ]*\) \].*/\1/p' "$config" | tr -d ' ' | tr ',' 'x')
  [ -n "$input" ] && [ -n "$dims" ] || { echo "build_trt_plans: cannot read input of $config" >&2; exit 2; }
  # batches up to the member's own max_batch_size (the audio member takes 16 windows, not 64 crops)
  max_batch=$(sed -n 's/^max_batch_size: \([0-9]*\)$/\1/p' "$config")
  max_batch=${max_batch:-$MAX_BATCH}
  opt_batch=$(( OPT_BATCH < max_batch ? OPT_BATCH : max_batch ))
  # FP16 unless the config asks for FP32 ("# precision: fp32", the audio member)
  precision=--fp16 label=FP16
  if grep -q '^# precision: fp32' "$config"; then precision= label=FP32; fi
  src=$onnx dst=$member/1/model.plan
  if [ "${DOCKER:-0}" = "1" ]; then src=/repo/$name/1/model.onnx dst=/repo/$name/1/model.plan; fi
  echo "build_trt_plans: $name ($input: ${dims}, batch 1..$max_batch, $label)"
  run_trtexec --onnx="$src" --saveEngine="$dst" $precision \
    --minShapes="$input:1x$dims" --optShapes="$input:${opt_batch}x$dims" --maxShapes="$input:${max_batch}x$dims"
  built=$((built + 1))
done
echo "build_trt_plans: built $built plan(s) in $REPO"
