#!/usr/bin/env python3
"""Run the attnzoo benchmarks: ``python benchmarks/run.py [--quick] [--json FILE] ...``.

A thin wrapper around ``attnzoo bench`` (see ``attnzoo bench --help`` and
docs/performance.md) that also works from a source checkout without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attnzoo.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
