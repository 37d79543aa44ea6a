"""How every script fails on bad input: one line on stderr naming the problem and the fix, exit code 2 (130 after
Ctrl-C). run_script turns into one line only DataError (datatypes.py), failed reads and writes and running out of
memory; every other exception is a bug, a student's or ours, and keeps its traceback."""
import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings

from datatypes import DataError, cause, one_line

OUT_OF_MEMORY = ("can't allocate memory", "out of memory")  # torch's RuntimeError for a failed allocation (CPU, CUDA)
MEMORY = "lower --batch-size, --image-size, --num-samples or the network's widths"  # main.py's options


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, "prog: error: ... (see --help)", exit code 2, and "(default: ...)" in --help
    for every option that has one and does not already say it."""

    class Formatter(argparse.ArgumentDefaultsHelpFormatter):
        def _get_help_string(self, action):
            if action.default in (None, False) or "default" in (action.help or ""):
                return action.help
            return super()._get_help_string(action)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=self.Formatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: {rank_prefix()}error: {one_line(message)} (see --help)\n")


def world() -> tuple:
    """(rank, number of processes) of this process under torchrun (RANK, WORLD_SIZE); (0, 1) otherwise."""
    rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return int(rank) if rank.isdigit() else 0, int(size) if size.isdigit() else 1


def rank_prefix() -> str:
    """"rank N: " under torchrun, whose processes all report (the first to fail ends the others)."""
    rank, size = world()
    return f"rank {rank}: " if size > 1 else ""


# --- Ctrl-C: Python runs the handler in the main thread, whichever thread the signal reached. It raises
# KeyboardInterrupt as Python's own does, except while `held()` is in force: then the press waits.
_pressed, _holding = [], []


def _on_sigint(signum, frame):
    _pressed.append(signum)
    if not _holding:
        raise KeyboardInterrupt


@contextlib.contextmanager
def held(then_raise: bool = True):
    """A Ctrl-C pressed during the block waits until it is done, then (then_raise) ends the work; nested: the
    outermost decides."""
    _holding.append(len(_pressed))
    try:
        yield
    finally:
        before = _holding.pop()
    if then_raise and len(_pressed) > before and not _holding:
        raise KeyboardInterrupt


def raise_pending_interrupt() -> None:
    """Raise a Ctrl-C that Python swallowed in a garbage-collection callback (called at every progress step)."""
    if _pressed and not _holding:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c():
    """The handler above for the duration of a script (main thread only), and quiet about a swallowed one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pressed.clear()
    old_handler, old_hook = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
    sys.unraisablehook = lambda u: None if issubclass(u.exc_type, KeyboardInterrupt) else old_hook(u)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_handler)
        sys.unraisablehook = old_hook
        _pressed.clear()


JOINED = []  # plumbing.run.join appends once this process has joined torchrun's process group


def leave(code: int, message: str) -> None:
    """Print message and exit; a torchrun process at once (gloo's threads can abort Python's exit, signal 6)."""
    sys.stdout.flush()
    sys.stderr.write(message)
    sys.stderr.flush()
    if JOINED:
        os._exit(code)
    sys.exit(code)


def run_script(parser: argparse.ArgumentParser, work, args, memory: str = MEMORY) -> None:
    """work(args), with bad input, failed I/O and out of memory one line and exit code 2 (memory: what to lower,
    in the script's options); Ctrl-C 130. Warnings: on success each once as a one-line note; on failure none."""
    with warnings.catch_warnings(record=True) as caught, ctrl_c():
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", ResourceWarning)  # as Python's default: a file another caller left open
        try:
            work(args)
            failure = None
        except DataError as e:
            failure = one_line(str(e))
        except OSError as e:
            failure = f"could not read or write {e.filename or 'a file'} ({e.strerror or cause(e)}): free some " \
                      "space, check the path and its permissions, or give another output path"
        except (RuntimeError, MemoryError) as e:
            if isinstance(e, RuntimeError) and not any(s in str(e).lower() for s in OUT_OF_MEMORY):
                raise  # a bug (a student's or ours): its traceback says where
            failure = f"out of memory: {memory}"
        except KeyboardInterrupt as e:
            leave(130, f"\n{e.args[0] if e.args else 'interrupted'}\n")
    if failure is not None:
        leave(2, f"{parser.prog}: {rank_prefix()}error: {failure}\n")
    for w in {one_line(str(w.message), 200): w for w in caught} if not world()[0] else ():
        print(f"{parser.prog}: note: {w}", file=sys.stderr)
