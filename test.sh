#!/usr/bin/env bash
# Run every check: lint (ruff), types (mypy --strict on src/), and the whole test suite.
# Extra arguments go to pytest, e.g. ./test.sh -k registry
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv test
echo "==> ruff" >&2
.venv/bin/ruff check src tests bench
echo "==> mypy --strict src" >&2
.venv/bin/mypy src
echo "==> pytest" >&2
exec .venv/bin/pytest "$@"
