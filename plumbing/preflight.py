"""Checks that must run before torch starts, imported first by every script (its own isort section in
pyproject.toml). OpenMP (libgomp) reads OMP_NUM_THREADS when torch loads it and, for a value it cannot use,
prints its own "Invalid value" line and goes on with its default: the script would then run with a thread
count nobody asked for, under a stray message. Such a value ends the script here, in one line, exit code 2."""
import os
import re
import sys

WHOLE_LIST = re.compile(r"\s*[1-9][0-9]*\s*(,\s*[1-9][0-9]*\s*)*")  # "2", or "4,2" (threads per nesting level)


def script_name() -> str:
    """main.py, sample.py, ...; python -m bench for a package run with -m."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    name = os.path.basename(path)
    return f"python -m {os.path.basename(os.path.dirname(path))}" if name == "__main__.py" else name


def omp_problem(value: str | None) -> str | None:
    if value is None or WHOLE_LIST.fullmatch(value):
        return None
    return (f"OMP_NUM_THREADS={value!r} is not a number of threads (a whole number of at least 1): set it to one, "
            "e.g. OMP_NUM_THREADS=2, or unset it to use every core")


problem = omp_problem(os.environ.get("OMP_NUM_THREADS"))
if problem:
    sys.stderr.write(f"{script_name()}: error: {problem}\n")
    sys.exit(2)
