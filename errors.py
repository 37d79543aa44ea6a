"""How every script fails: one line on stderr naming the problem and the fix, exit code 2, never a
traceback. DataError is the project's one exception for bad input; Parser gives argparse's errors
the same one-line form; run_script wraps a script's work. No torch here, so that `--help` and
argument errors answer at once."""
import argparse
import os
import sys
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


def is_disk_full(e: BaseException) -> bool:
    """torch.save reports a failed write (e.g. ENOSPC) as a RuntimeError from its zip writer."""
    return isinstance(e, RuntimeError) and ("file write failed" in str(e) or "PytorchStreamWriter" in str(e))


def is_out_of_memory(e: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError ("can't allocate memory", "out of memory")."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()))


def run_script(parser: argparse.ArgumentParser, work, args, interrupted=lambda: "interrupted") -> None:
    """work(args), with every failure a user can cause turned into one line and exit code 2 (130 on
    Ctrl-C, with the text interrupted() returns). Warnings raised meanwhile are collected: on success each is
    shown once as a one-line note; on failure the error line alone is printed."""
    prog = parser.prog
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            work(args)
            failure = None
        except DataError as e:
            failure = one_line(str(e))
        except ValueError as e:
            failure = one_line(str(e))
        except OverflowError as e:
            failure = f"a number is too large ({cause(e)}): check the numeric options and the checkpoint's config"
        except OSError as e:
            where = e.filename or "a file"
            failure = f"could not read or write {where} ({e.strerror or cause(e)}): free some space, check the path " \
                      "and its permissions, or choose another --out"
        except (RuntimeError, MemoryError) as e:
            if is_out_of_memory(e):
                failure = "out of memory: lower --batch-size, --image-size, --num-samples or the network's widths"
            elif is_disk_full(e):
                failure = f"a file could not be written ({cause(e)}): the disk may be full; free some space"
            else:
                raise
        except KeyboardInterrupt:
            parser.exit(130, f"\n{interrupted()}\n")
    if failure is not None:
        parser.exit(2, f"{prog}: {rank_prefix()}error: {failure}\n")
    for w in {one_line(str(w.message), CAUSE_LENGTH): w for w in caught} if not world()[0] else ():
        print(f"{prog}: note: {w}", file=sys.stderr)
