"""``python -m zss_bench.cli``: the same command as ``zss-bench`` (grid cells use it)."""
import sys

from zss_bench.cli import main

sys.exit(main())
