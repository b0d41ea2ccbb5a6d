"""``python -m ftbc_core ...`` is the same as the ``ftbc`` console script."""

import sys

from .cli import main

sys.exit(main())
