"""Needle-in-a-video benchmark on the bundled model (or --model): dense vs chunked vs chunked + bi-level.

    python benchmarks/needle.py [--quick] [--json PATH] [--heatmap PNG] [--lengths 256,2048] [--cases N]

The same as ``videoxl eval needle``; see ``videoxl/eval/needle.py`` for what each column measures.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoxl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "needle", *sys.argv[1:]]))
