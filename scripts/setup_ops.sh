#!/usr/bin/env bash
# Install the tools the `ops` tests run, idempotently, on a fresh Debian machine (called by scripts/setup.sh):
#   - Prometheus and promtool from Debian's `prometheus` package (the service it ships is never left running:
#     the tests start their own Prometheus on free loopback ports, and nothing may hold the default :9090);
#   - kustomize, pinned, built by `go install` into ~/.cache/dfguard/bin (outside the repository).
# hadolint and kubernetes-validate are Python packages of the `ops` extra (pyproject.toml), installed with .venv.
set -euo pipefail

KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.7.1}
BIN_DIR=${DFG_OPS_BIN:-$HOME/.cache/dfguard/bin}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- Prometheus + promtool (Debian) ----------------------------------------------------------------------
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "setup_ops: installing Debian's prometheus package (prometheus, promtool)"
  # Keep the package's service from starting: a policy-rc.d that answers 101 ("action forbidden"), added
  # only for this install when the machine has none (containers usually do).
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  [ -n "$added_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
  # On a machine with systemd the unit may still be enabled for the next boot: stop and disable it.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# Whatever happened above (or on an earlier run), no packaged Prometheus may keep running.
if pids=$(pgrep -x -u prometheus prometheus 2>/dev/null); then
  echo "setup_ops: stopping the packaged Prometheus service ($pids)"
  if command -v service >/dev/null; then $SUDO service prometheus stop >/dev/null 2>&1 || true; fi
  for pid in $(pgrep -x -u prometheus prometheus 2>/dev/null || true); do $SUDO kill "$pid" 2>/dev/null || true; done
fi

# --- kustomize (Go module, pinned) ------------------------------------------------------------------------
if [ ! -x "$BIN_DIR/kustomize" ] || ! "$BIN_DIR/kustomize" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then
  # Go's official tarball installs outside the default PATH of non-login shells.
  command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
  command -v go >/dev/null || { echo "setup_ops: Go >= 1.22 is needed to build kustomize (go install)" >&2; exit 1; }
  echo "setup_ops: building kustomize $KUSTOMIZE_VERSION into $BIN_DIR"
  mkdir -p "$BIN_DIR"
  # At most two compile jobs: the machine is shared (2 cores).
  GOBIN="$BIN_DIR" GOFLAGS="-p=2" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

echo "setup_ops: ready (kustomize $("$BIN_DIR/kustomize" version), $(promtool --version 2>&1 | head -1))"
