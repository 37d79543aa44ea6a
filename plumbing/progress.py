"""Progress with the time remaining: a tqdm bar on a terminal; in a log file a plain line after 5 s, then every 30 s."""
import sys
import time

from tqdm import tqdm

from plumbing.errors import raise_pending_interrupt


class Progress:
    """done of total units; note(key=value) shows running values (the loss); say(line) prints the plain lines;
    show=False: nothing (torchrun's other processes)."""

    def __init__(self, total: int, desc: str, unit: str = "it", show: bool = True, say=None):
        self.total, self.desc, self.unit, self.show = total, desc, unit, show
        self.say = say or (lambda line: print(line, flush=True))
        self.postfix, self.start, self.next = {}, time.time(), time.time() + 5
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False) if show and sys.stderr.isatty() else None

    def note(self, **values) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def at(self, done: int) -> None:
        """done of total units are finished."""
        raise_pending_interrupt()  # a Ctrl-C swallowed during garbage collection ends the work here
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif self.show and time.time() >= self.next and done < self.total:
            elapsed = time.time() - self.start
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            self.say(f"  {self.desc}: {done}/{self.total} {self.unit}{extra}, {elapsed:.0f} s, "
                     f"about {elapsed / done * (self.total - done):.0f} s to go")
            self.next = time.time() + 30

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def wrap(self, iterable):
        """The items of iterable, counting each when it is done."""
        for i, item in enumerate(iterable, 1):
            yield item
            self.at(i)
        self.close()
