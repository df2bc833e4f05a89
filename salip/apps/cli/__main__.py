"""``python -m salip.apps.cli``."""

import sys

from salip.apps.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
