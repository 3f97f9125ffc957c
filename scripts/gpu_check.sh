#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU (the lent device machine): crop throughput and latency of the
# classifier on the GPU, fp32 and fp16, printed as a table (stderr) and JSON (stdout, also written to
# ${OUT:-.}/gpu_check.json). Bounded: every measurement is a fixed number of repeats; the whole run takes
# well under a minute once the environment exists. Needs the project's .venv (run scripts/setup.sh first);
# torch with CUDA or onnxruntime-gpu is used when installed, and whatever is missing is listed as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu_check: no nvidia-smi" >&2
out=${OUT:-.}
timeout "${GPU_CHECK_TIMEOUT:-300}" .venv/bin/python -m bench.gpu --json "$@" | tee "$out/gpu_check.json"
