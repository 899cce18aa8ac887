"""``python -m app``: the same as ``huginn-studio`` and ``python run.py``."""

import sys

from .cli import main

sys.exit(main())
