"""How every script fails on bad input: one line on stderr naming the problem and the fix, exit code 2.
DataError is the project's one exception for bad input (a setting, a file, a checkpoint); Parser gives
argparse's errors the same one-line form; run_script wraps a script's work and turns into one line only
DataError, failed reads and writes (OSError: a missing file, a full disk, no permission) and running out of
memory. Every other exception is a bug, a student's or ours, and keeps its traceback so that it can be
found. A library's error about our input is caught where we read the input and raised as a DataError.
No torch here, so that `--help` and argument errors answer at once."""
import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings

CAUSE_LENGTH = 200  # characters of a library's message kept in ours


class DataError(Exception):
    """A missing, corrupt or inconsistent input (file, checkpoint, setting); the message says how to fix it."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" for every option that has one and does not already say it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "prog: error: ... (see --help)", exit code 2, no usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: {rank_prefix()}error: {one_line(message)} (see --help)\n")


def world() -> tuple:
    """(rank, number of processes) of this process under torchrun (RANK, WORLD_SIZE); (0, 1) otherwise."""
    rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return int(rank) if rank.isdigit() else 0, int(size) if size.isdigit() else 1


def world_problem() -> str | None:
    """One line when RANK and WORLD_SIZE describe no torchrun process (set alone, not whole numbers, or a rank
    outside 0..WORLD_SIZE - 1), else None: such a process would train unseen or wait for ranks that never come."""
    rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and size is None:
        return None
    ok = rank is not None and size is not None and rank.isdigit() and size.isdigit() and int(rank) < int(size)
    return None if ok else (f"RANK={rank} with WORLD_SIZE={size} is no torchrun process (WORLD_SIZE at least 1, "
                            "RANK in 0..WORLD_SIZE-1): start main.py with torchrun, or unset RANK and WORLD_SIZE")


def rank_prefix() -> str:
    """"rank N: " under torchrun, whose processes all report (the first to fail ends the others)."""
    rank, size = world()
    return f"rank {rank}: " if size > 1 else ""


def one_line(text: str, limit: int | None = None) -> str:
    """text on one line; if longer than limit, cut at a word boundary (never mid-word) with '...'."""
    text = " ".join(str(text).split())
    if limit is None or len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut.rstrip(",;:") + " ..."


def cause(e: BaseException) -> str:
    """A library exception's message as a short cause in parentheses-friendly form."""
    return one_line(str(e), CAUSE_LENGTH) or type(e).__name__


def is_out_of_memory(e: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError ("can't allocate memory", "out of memory")."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()))


MEMORY = "lower --batch-size, --image-size, --num-samples or the network's widths"  # main.py's options


_pressed = []  # a Ctrl-C that arrived while ctrl_c() was in force


def _on_sigint(signum, frame):
    _pressed.append(signum)
    raise KeyboardInterrupt


def _quiet_interrupt(hook):
    """sys.unraisablehook that keeps quiet about a Ctrl-C swallowed where Python cannot raise it."""
    def handle(unraisable):
        if not (isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            hook(unraisable)
    return handle


@contextlib.contextmanager
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt, as by default, and is also remembered. Python cannot raise it when it
    lands in a garbage-collection callback (a weakref's): it would print "Exception ignored in ..." and carry on
    training. Here that is silent, and raise_pending_interrupt() (called by every Progress step) raises it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pressed.clear()
    old_handler, old_hook = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
    sys.unraisablehook = _quiet_interrupt(old_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_handler)
        sys.unraisablehook = old_hook
        _pressed.clear()


def raise_pending_interrupt() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that Python had to swallow (see ctrl_c)."""
    if _pressed:
        raise KeyboardInterrupt


def run_script(parser: argparse.ArgumentParser, work, args, interrupted=lambda: "interrupted",
               memory: str = MEMORY) -> None:
    """work(args), with bad input, failed I/O and out of memory turned into one line and exit code 2 (130 on
    Ctrl-C, with the KeyboardInterrupt's text or interrupted()); any other exception is raised as it is.
    memory: what to lower when memory runs out, in the script's own options.
    Warnings raised meanwhile are collected: on success each is shown once as a one-line note; on failure the
    error line alone is printed."""
    prog = parser.prog
    with warnings.catch_warnings(record=True) as caught, ctrl_c():
        warnings.simplefilter("default")
        try:
            work(args)
            failure = None
        except DataError as e:
            failure = one_line(str(e))
        except OSError as e:
            where = e.filename or "a file"
            failure = f"could not read or write {where} ({e.strerror or cause(e)}): free some space, check the path " \
                      "and its permissions, or choose another --out"
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise  # a bug (a student's or ours): its traceback says where
            failure = f"out of memory: {memory}"
        except KeyboardInterrupt as e:
            parser.exit(130, f"\n{e.args[0] if e.args else interrupted()}\n")
    if failure is not None:
        parser.exit(2, f"{prog}: {rank_prefix()}error: {failure}\n")
    for w in {one_line(str(w.message), CAUSE_LENGTH): w for w in caught} if not world()[0] else ():
        print(f"{prog}: note: {w}", file=sys.stderr)
