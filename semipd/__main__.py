"""``python -m semipd ...``: the same as the ``semipd`` command."""

import sys

from semipd.cli import main

if __name__ == "__main__":  # not when a spawned process (the engine core) imports this module
    sys.exit(main())
