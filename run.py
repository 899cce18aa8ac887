"""Start Huginn Studio: ``python run.py [--model auto] [--port 7860]``; see ``python run.py --help``."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
