"""``python -m mfdr ...``: the ``mfdr`` command (see ``mfdr.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
