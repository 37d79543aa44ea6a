"""python -m bench [--quick] [--compile] [--concurrent N] [--quality]: bench/bench.py's measurements."""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import sys

from bench.bench import main

main(sys.argv[1:])
