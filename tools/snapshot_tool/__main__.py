"""``python -m tools.snapshot_tool``: the snapshot_tool command."""

from __future__ import annotations

import sys

from tools.snapshot_tool.cli import main

sys.exit(main())
