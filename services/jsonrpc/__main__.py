"""``python -m services.jsonrpc --node-dir DIR``."""

from __future__ import annotations

import sys

from pycita.service import run_service
from services.jsonrpc.service import JsonRpcService

if __name__ == "__main__":
    sys.exit(run_service(JsonRpcService))
