"""Run a benchmark config: the same as ``salip benchmark``.

    python benchmarks/run.py --config benchmarks/configs/shared-smoke.toml [--limit N]
        [--out DIR] [--rerun]

See benchmarks/README.md for the configs, the protocol and the outputs.
"""

from __future__ import annotations

import sys

from salip.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
