#!/usr/bin/env bash
# Make .venv with pinned torch and clipsearch (editable, with its test extras). Used by the quick
# start and by CI. torch is pinned because an unpinned request may pull a multi-gigabyte build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${CLIPSEARCH_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e '.[test]'
