"""``python -m blindrelay``: the ``blindrelay`` command."""

import sys

from blindrelay.server.cli import main

sys.exit(main())
