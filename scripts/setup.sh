#!/usr/bin/env bash
# Create .venv with everything t2t-lens needs to run the app, the notebooks and the tests; idempotent.
# Every version is pinned by constraints.txt (regenerate it with scripts/lock.sh), so a new release of a
# dependency cannot change a clean set-up unnoticed. torch==2.13.0 is the CPU wheel on this project's
# machines (an unpinned torch pulls a CUDA build of several GB); on a GPU machine install a CUDA build of
# torch into .venv first and set T2T_LENS_TORCH to its requirement (e.g. T2T_LENS_TORCH="torch==2.13.0+cu130").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${T2T_LENS_TORCH:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# the repo's packages (t2t, analysis, app) editable, with the app and the development extras
.venv/bin/python -m pip install -q -c constraints.txt "$TORCH" -e ".[dev]"
# LXT, the AttnLRP reference of the tests: without its own requirements (transformers, torchvision, ...),
# which the tests do not use and which do not install beside the CPU torch wheel
.venv/bin/python -m pip install -q --no-deps -c constraints.txt lxt
# a Jupyter kernel of this environment, for the notebooks
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "environment ready: .venv"
