#!/usr/bin/env bash
# py-spiffe (PyPI `spiffe`), the Python SPIFFE Workload API client the agent's end-to-end
# tests run as a workload nobody here wrote. Installed in a virtual environment beside
# the build, `${CARGO_TARGET_DIR:-target}/py-spiffe`, where the tests look for it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/py-spiffe"
version="0.3.2"
if "$venv/bin/python3" -c "import importlib.metadata as m, sys; sys.exit(m.version('spiffe') != '$version')" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "spiffe==$version"
"$venv/bin/python3" -c "import spiffe; print('py-spiffe', '$version', 'in', '$venv')"
