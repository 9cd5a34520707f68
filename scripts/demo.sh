#!/usr/bin/env bash
# Demo: set up, create a one-node chain (1 s blocks), start it, run mixed
# traffic (100 tx/s for 20 s), print height, block hash, state root and a few
# accounts as blocks are produced, then stop. Extra arguments go to
# `python -m pycita.demo` (see --help: --tps, --duration, --block-interval, --dir, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pycita.demo "$@"
