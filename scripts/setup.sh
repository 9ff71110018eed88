#!/usr/bin/env bash
# Create .venv with everything t2t-lens needs (CPU torch, see requirements.txt), idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# the repo's packages (t2t, analysis) importable from anywhere: app, notebooks, benchmarks
.venv/bin/python -m pip install -q --no-deps -e .
# a Jupyter kernel of this environment, for the notebooks
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "environment ready: .venv"
