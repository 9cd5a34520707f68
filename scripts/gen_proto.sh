#!/usr/bin/env bash
# Regenerate pycita/proto/*_pb2.py from proto/*.proto with grpcio-tools' protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-pycita/proto}
mkdir -p "$out"
"$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" proto/*.proto
touch "$out/__init__.py"
