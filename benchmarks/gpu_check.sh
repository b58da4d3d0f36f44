#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): run from the repository root on a lent
# GPU machine; installs nothing, needs nothing outside the repository. About 3-4 minutes.
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
echo "python: $PY"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())"
timeout 300 "$PY" benchmarks/gpu_check.py "$@"
