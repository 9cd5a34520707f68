#!/usr/bin/env bash
# Set up the checkout, then run the whole test suite. Arguments go to pytest.
# pytest's exit status is returned unchanged: 5 (no tests collected) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/pytest -q "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "test.sh: pytest collected no tests (exit status 5)" >&2
fi
exit "$status"
