#!/usr/bin/env bash
# Run the confero server (SQLite store in ./data). Extra arguments go to `confero server`,
# e.g. ./run.sh --host 0.0.0.0 --port 9000
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv
exec .venv/bin/confero --log-level INFO server --data-dir data "$@"
