#!/usr/bin/env bash
# The quick start, offline: set up .venv, index sample_images/ with the demo model that ships inside
# the package, and search it. The results are images you can open and check by eye.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LIB=${QUICKSTART_LIBRARY:-.quickstart-library}
.venv/bin/clipsearch index sample_images --model shapes --library "$LIB"
echo
echo '$ clipsearch query "a red circle" -k 5'
.venv/bin/clipsearch query "a red circle" --library "$LIB" -k 5
echo
echo '$ clipsearch query "a large blue square" -k 5'
.venv/bin/clipsearch query "a large blue square" --library "$LIB" -k 5
echo
echo "Captions of every sample image: sample_images/captions.csv. Library: $LIB"
