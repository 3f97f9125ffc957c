#!/usr/bin/env bash
# Create the server-side environment for a real Triton Inference Server on CPU, idempotently:
# a SEPARATE venv at .cache/triton-venv with nvidia-pytriton (which bundles the tritonserver 2.51 binary and its
# Python backend), numpy<2 and onnxruntime. It is separate from .venv because Python-backend models return empty
# tensors when the stub's environment has numpy 2, while the service itself runs on numpy 2.
# devtools/triton_server.py launches the binary from here; tests marked `triton` need it.
# Re-running is cheap: pip runs again only when the requirements or the interpreter changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.cache/triton-venv
# onnxruntime is pinned to the release dfguard's own venv uses; verified to import and run with numpy 1.26.
REQS=("nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime==1.32.0")

"$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
  echo "setup_triton: need Python >= 3.11 with venv (set PYTHON=...)" >&2
  exit 1
}

# The stub embeds libpython, so the interpreter must ship a shared libpython (pyenv: --enable-shared;
# Debian: the libpython3.X package, normally present with python3.X).
"$PY" - <<'PYEOF' || exit 1
import pathlib, sys, sysconfig
libdir = pathlib.Path(sysconfig.get_config_var("LIBDIR") or "")
name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so"
if not any(libdir.glob(name + "*")):
    sys.exit(f"setup_triton: no shared {name} in {libdir}; install libpython3.{sys.version_info.minor} "
             "or use a Python built with --enable-shared")
PYEOF

py_id() { "$1" -c 'import sys; print(sys.version, sys.base_prefix)' 2>/dev/null; }
want=$({ printf '%s\n' "${REQS[@]}"; py_id "$PY"; } | sha256sum | cut -d' ' -f1)
stamp=$VENV/.dfguard-triton-installed

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ "$(py_id "$VENV/bin/python")" != "$(py_id "$PY")" ]; then
  # A venv from another (or a broken) interpreter is rebuilt from scratch, not patched.
  if [ "$(py_id "$VENV/bin/python")" != "$(py_id "$PY")" ]; then
    echo "setup_triton: creating $VENV with $("$PY" -c 'import sys; print(sys.executable)')"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv --clear "$VENV"
  fi
  echo "setup_triton: installing ${REQS[*]} into $VENV"
  rm -f "$stamp"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${REQS[@]}"
  # Verify what the stub will see: numpy<2, a working onnxruntime, the binary and a stub for this Python.
  "$VENV/bin/python" - <<'PYEOF'
import pathlib, sys
import numpy, onnxruntime, pytriton
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__} in the triton venv; need <2"
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
for p in (root / "bin" / "tritonserver", stub, root / "backends" / "python"):
    assert p.exists(), f"missing {p}"
PYEOF
  echo "$want" > "$stamp"
fi

versions=$("$VENV/bin/python" -c 'import sys, numpy, onnxruntime
print(f"Python {sys.version.split()[0]}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")')
echo "setup_triton: ready ($VENV: nvidia-pytriton 0.7.0 / tritonserver 2.51.0, $versions, $(du -sh "$VENV" | cut -f1))"
