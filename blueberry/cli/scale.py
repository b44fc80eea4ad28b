"""`blueberry-scale`: scaling-law fits and plans (not yet available)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("blueberry-scale: not yet available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
