#!/usr/bin/env bash
# Set up everything (system packages, venv, test extras) and run the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/setup.sh --test | tail -n 1)
# pytest-xvfb starts a virtual X server for the napari tests; exit code 5 (no tests collected) is a failure too.
exec "$venv/bin/python" -m pytest "$@"
