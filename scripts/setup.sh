#!/usr/bin/env bash
# Prepare this checkout to run pycita: idempotent, non-interactive (no stdin),
# safe to run as root in CI on a fresh Debian machine and again and again on a
# developer machine.
#
#   1. makes sure python3 (>= 3.11) with venv is available (apt-get as root);
#   2. creates .venv if it is missing;
#   3. pip install -e '.[dev]' when pyproject.toml, setup.py or pycita/_native.c
#      changed since the last install (it builds the C extension pycita._native;
#      gcc and the Python headers are installed with apt-get when missing);
#   4. regenerates pycita/proto/*_pb2.py when a proto/*.proto is newer;
#   5. runs scripts/ensure_rabbitmq.sh (installs and starts RabbitMQ).
#
# Environment: PYTHON (interpreter creating the venv, default python3),
# PYCITA_SKIP_RABBITMQ=1 skips step 5.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "setup: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PY=${PYTHON:-python3}
VENV=.venv

apt_install() {
    [ "$(id -u)" = 0 ] || die "need packages $* but not running as root; install them first"
    log "installing $* with apt-get"
    apt-get update -q </dev/null >&2
    apt-get install -y -q --no-install-recommends "$@" </dev/null >&2
}

# ------------------------------------------------------------- python + venv
if ! command -v "$PY" >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip ca-certificates
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PY is $("$PY" -V 2>&1); pycita needs Python >= 3.11"

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    if ! "$PY" -m venv "$VENV" </dev/null >&2; then
        rm -rf "$VENV"
        pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "python${pyver}-venv" || apt_install python3-venv
        "$PY" -m venv "$VENV" </dev/null >&2
    fi
fi

# ------------------------------------------------------------- C compiler (pycita._native)
if ! command -v cc >/dev/null 2>&1; then
    apt_install gcc libc6-dev
fi
if [ ! -f "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
    apt_install python3-dev
fi

# ------------------------------------------------------------- pip install
stamp="$VENV/.pycita-install-stamp"
want=$(cat pyproject.toml setup.py pycita/_native.c | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import pycita.cli' 2>/dev/null \
    || ! "$VENV/bin/python" -c 'import pycita._native' 2>/dev/null \
    || [ ! -x "$VENV/bin/pycita" ]; then
    log "pip install -e '.[dev]'"
    "$VENV/bin/python" -m pip install -q -e '.[dev]' </dev/null >&2
    echo "$want" >"$stamp"
else
    log "python packages up to date"
fi

# ------------------------------------------------------------- protobuf
regen=0
for proto in proto/*.proto; do
    [ -e "$proto" ] || continue
    gen="pycita/proto/$(basename "${proto%.proto}")_pb2.py"
    if [ ! -f "$gen" ] || [ "$proto" -nt "$gen" ]; then regen=1; fi
done
if [ "$regen" = 1 ]; then
    log "regenerating protobuf code"
    PYTHON="$VENV/bin/python" bash scripts/gen_proto.sh
fi

# ------------------------------------------------------------- rabbitmq
if [ "${PYCITA_SKIP_RABBITMQ:-0}" != 1 ]; then
    bash scripts/ensure_rabbitmq.sh
fi
log "ready ($("$VENV/bin/python" -V), $(command -v rabbitmqctl || echo 'no rabbitmqctl'))"
