"""``python -m regiontrt``: the same command line as ``regiontrt``."""

from __future__ import annotations

import sys

from regiontrt.cli import main

if __name__ == "__main__":
    sys.exit(main())
