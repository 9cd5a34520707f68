"""``python -m services.executor --node-dir DIR``."""

import sys

from services.executor.service import main

if __name__ == "__main__":
    sys.exit(main())
