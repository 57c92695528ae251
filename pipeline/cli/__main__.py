"""``python -m pipeline.cli``: the ``oml`` command."""

import sys

from pipeline.cli.command import main

sys.exit(main())
