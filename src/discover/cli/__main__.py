"""``python -m discover.cli``: the same as ``python -m discover``."""

import sys

from discover.cli import main

sys.exit(main())
