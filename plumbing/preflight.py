"""What must be settled before torch starts, imported first by every script (its own isort section in
pyproject.toml). OpenMP (libgomp) reads OMP_NUM_THREADS when torch loads it and, for a value it cannot use,
prints its own "Invalid value" line and goes on with a thread count nobody asked for: such a value ends the
script here, in one line, exit code 2."""
import os
import re
import sys

value = os.environ.get("OMP_NUM_THREADS")
if value is not None and not re.fullmatch(r"\s*[1-9][0-9]*\s*(,\s*[1-9][0-9]*\s*)*", value):  # "2", or "4,2"
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    sys.stderr.write(f"{'python -m bench' if name == '__main__.py' else name}: error: OMP_NUM_THREADS={value!r} is "
                     "not a number of threads (a whole number of at least 1): set it to one, e.g. OMP_NUM_THREADS=2, "
                     "or unset it to use every core\n")
    sys.exit(2)
