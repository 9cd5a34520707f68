"""``python -m services.consensus --node-dir DIR``."""

from __future__ import annotations

import sys

from pycita.service import run_service
from services.consensus.service import ConsensusService

if __name__ == "__main__":
    sys.exit(run_service(ConsensusService))
