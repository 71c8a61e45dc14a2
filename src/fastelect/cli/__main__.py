"""``python -m fastelect.cli``: the same as the ``fastelect`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
