"""What must be settled before torch starts, imported first by every script (its own isort section in
pyproject.toml). OpenMP (libgomp) reads OMP_NUM_THREADS when torch loads it and, for a value it cannot use,
prints its own "Invalid value" line and goes on with a thread count nobody asked for; matplotlib prints two
lines of its own for an MPLCONFIGDIR that is no writable folder. Either ends the script here, in one line, exit
code 2. Unless OMP_WAIT_POLICY or GOMP_SPINCOUNT are set, libgomp's threads spin 10,000 times (not 300,000) before
they sleep: beside two other runs on 2 cores 20,000 images took 33 times their time alone, now 10 times, and
alone 3 % longer, with the same weights (docs/speed.md; sleeping at once, OMP_WAIT_POLICY=PASSIVE, cost 60 % alone)."""
import os
import re
import sys

omp, mpl, problem = os.environ.get("OMP_NUM_THREADS"), os.environ.get("MPLCONFIGDIR"), None
if omp is not None and not re.fullmatch(r"\s*[1-9][0-9]*\s*(,\s*[1-9][0-9]*\s*)*", omp):  # "2", or "4,2"
    problem = f"OMP_NUM_THREADS={omp!r} is not a number of threads (a whole number of at least 1): set it to one, " \
        "e.g. OMP_NUM_THREADS=2, or unset it to use every core"
elif mpl is not None and not (os.path.isdir(mpl) and os.access(mpl, os.W_OK)):
    problem = f"MPLCONFIGDIR={mpl!r} is not a writable folder (matplotlib keeps its settings there): unset it or " \
        "point it to one"
if problem:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    sys.stderr.write(f"{'python -m bench' if name == '__main__.py' else name}: error: {problem}\n")
    sys.exit(2)
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
