"""``python -m discover`` (also what ``torchrun -m discover`` runs)."""

import sys

from .cli import main

sys.exit(main())
