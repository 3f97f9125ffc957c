#!/usr/bin/env bash
# Build the real S3-compatible server the `s3` tests start (devtools/s3_server.py), idempotently: Versity
# Gateway (versitygw, Apache-2.0, POSIX backend), pinned, by `go install` from the Go module proxy into
# ${DFG_VERSITYGW_BIN:-~/.cache/dfguard/bin}, outside the repository (as scripts/setup_ops.sh builds kustomize).
# About 2 minutes on 2 cores the first time; a no-op once the pinned version is there.
set -euo pipefail

VERSION=${DFG_VERSITYGW_VERSION:-v1.8.0}
BIN_DIR=${DFG_VERSITYGW_BIN:-$HOME/.cache/dfguard/bin}
BIN=$BIN_DIR/versitygw
STAMP=$BIN_DIR/.versitygw-version  # the binary prints "git" as its version when built by `go install`

if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  echo "setup_s3: ready ($BIN, versitygw $VERSION)"
  exit 0
fi

# Go's official tarball installs outside the default PATH of non-login shells; Debian's golang-go otherwise.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
  echo "setup_s3: installing Debian's golang-go"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-go
fi
echo "setup_s3: building versitygw $VERSION into $BIN_DIR (go install, about 2 minutes on 2 cores)"
mkdir -p "$BIN_DIR"
rm -f "$STAMP"
# At most two compile jobs: the machine is shared (2 cores). CGO off: a static binary, no C toolchain needed.
GOBIN="$BIN_DIR" GOFLAGS="-p=2" CGO_ENABLED=0 go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
echo "$VERSION" > "$STAMP"
echo "setup_s3: ready ($BIN, versitygw $VERSION)"
