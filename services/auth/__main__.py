"""``python -m services.auth --node-dir DIR``."""

import sys

from services.auth.service import main

if __name__ == "__main__":
    sys.exit(main())
