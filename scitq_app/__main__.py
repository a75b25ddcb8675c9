"""Entry point of `python -m scitq_app` and of scitq.pyz."""
import sys

from scitq_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
