"""``python -m medground.cli``: the same as the ``medground`` command."""

import sys

from medground.cli import main

sys.exit(main())
