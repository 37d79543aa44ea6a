"""Progress that people can follow: a tqdm bar on a terminal, and in a log file (where tqdm's
carriage-return updates make no new lines) one plain line every `every` seconds."""
import sys
import time

from tqdm import tqdm

from plumbing.errors import raise_pending_interrupt


class Progress:
    """Wraps an iterable of known length. note(key=value) shows running values (e.g. the loss)."""

    def __init__(self, iterable, total: int, desc: str, unit: str = "it", every: float = 30.0, show: bool = True,
                 say=None, forecast: str | None = None):
        """say(line): where the plain lines go (default: print to stdout). forecast: after the first few
        seconds, say once how long the whole will take on this machine, followed by this text (e.g. how
        to skip the work)."""
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.forecast = forecast if show else None
        self.say = say or (lambda line: print(line, flush=True))
        self.every = every if show else float("inf")
        self.postfix = {}
        self.start = self.last = time.time()
        tty = show and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.1) if tty else None

    def note(self, **values) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def __iter__(self):
        for i, item in enumerate(self.iterable, 1):
            yield item
            self.at(i)
        self.close()

    def at(self, done: int) -> None:
        """done of total units are finished (for work that calls back instead of looping, e.g. a sampler)."""
        raise_pending_interrupt()  # a Ctrl-C swallowed during garbage collection ends the work here
        now = time.time()
        if self.forecast is not None and (now - self.start >= 3 or done >= 50) and done < self.total:
            line = f"  {self.desc}: about {(now - self.start) / done * self.total:.0f} s in all{self.forecast}"
            self.bar.write(line) if self.bar is not None else self.say(line)
            self.forecast = None
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif now - self.last >= self.every and done < self.total:
            self.last = now
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            self.say(f"  {self.desc}: {done}/{self.total} {self.unit}{extra}, {now - self.start:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
