"""``python -m semipd ...``: the same as the ``semipd`` command."""

import sys

from semipd.cli import main

sys.exit(main())
