"""``python -m rpg`` runs the ``rpg`` command."""

import sys

from rpg.cli import main

sys.exit(main())
