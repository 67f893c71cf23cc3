"""``python -m profiler.cli``: the seqprof command line."""
import sys

from profiler.cli import main

sys.exit(main())
