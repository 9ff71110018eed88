#!/usr/bin/env bash
# t2t-lens on a GPU in one call (see benchmarks/gpu_check.py's docstring for the parts and the `run` command).
#   bash benchmarks/gpu_check.sh --download     here, with internet: the wheels the GPU machine lacks -> .gpu_wheels/
#   bash benchmarks/gpu_check.sh [ARGS...]      there, no internet: pip install --no-index from .gpu_wheels/, then
#                                               python benchmarks/gpu_check.py ARGS (results under $OUT or --out)
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu_wheels
if [ "${1:-}" = "--download" ]; then
  shift
  exec .venv/bin/python benchmarks/gpu_check.py --download "$WHEELS" "$@"
fi
PY=${PYTHON:-python3}  # on the GPU machine: the python3 that holds its CUDA build of torch
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${TMPDIR:-/tmp}/gpu_check_site
  t0=$(date +%s)
  # --no-deps: the folder holds exactly what the machine lacks; its own packages stay as they are
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE in $(( $(date +%s) - t0 )) s"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
