"""Imported first by every script, before torch: an OMP_NUM_THREADS libgomp cannot use, or an MPLCONFIGDIR that is
no writable folder, ends the script in one line (not the libraries' own lines). libgomp's threads spin 10,000 times
before they sleep, not 300,000: beside two other runs 10 times slower, not 33, alone 3 % (docs/speed.md)."""
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
