"""python -m bench [--quick] [--compile] [--concurrent N] [--quality]: bench/bench.py's measurements."""
import sys

from bench.bench import main

main(sys.argv[1:])
