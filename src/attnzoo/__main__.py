"""``python -m attnzoo``: the same as the ``attnzoo`` command (``attnzoo demo``, ``attnzoo bench``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
