"""``python -m attnzoo.bench``: the same as ``attnzoo bench``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
