#!/usr/bin/env bash
# Set up the venv and run the headless demo on the bundled sample cases.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/setup.sh | tail -n 1)
exec "$venv/bin/bigl" demo "$@"
