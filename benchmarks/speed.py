"""Time salip against the SaLIP reference cost structure: the same as ``salip bench-speed``.

    python benchmarks/speed.py --shape 512x512x200 --sam-checkpoint vit_b --json speed.json
    python benchmarks/speed.py --input ct.nii.gz --precision fp32

See benchmarks/RESULTS.md for recorded figures and how they were taken.
"""

from __future__ import annotations

import sys

from salip.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench-speed", *sys.argv[1:]]))
