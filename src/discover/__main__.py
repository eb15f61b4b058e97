"""``python -m discover`` (also what ``torchrun -m discover`` runs)."""

import sys

from discover.cli import main

sys.exit(main())
