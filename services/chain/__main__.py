"""``python -m services.chain --node-dir DIR``."""

import sys

from services.chain.service import main

if __name__ == "__main__":
    sys.exit(main())
