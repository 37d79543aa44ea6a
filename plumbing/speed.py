"""How training and sampling use the machine at hand, decided by what it has and how busy it is.

- Precision: bf16 autocast (Kalamkar et al. 2019, arXiv:1905.12322: bf16 keeps fp32's exponent,
  so no loss scaling) where the hardware computes bf16 natively and a short check in this process
  shows it faster; fp32 otherwise. Without native bf16 (AVX2 CPUs) it is emulated and ~100x slower.
- Threads: a run keeps one thread count from start to end (thread_policy), because float sums split
  over another number of threads round differently: the same command and seed give the same weights
  whatever the load. On a shared machine PyTorch's OpenMP threads spin while they wait, so two runs with
  all cores each fight for them; --threads follow (SharedCores) leaves other processes the cores they
  use, and gives up that reproducibility.
- Device: pick_device (auto: a CUDA GPU where there is one).
Nothing here changes the equations: autocast only runs the network's matmuls and convolutions in bf16.
"""
import contextlib
import copy
import os
import statistics
import sys
import time

import torch

from plumbing.catalog import PRECISIONS  # noqa: F401  (auto, fp32, bf16)
from plumbing.errors import DataError

FASTER = 1.15  # auto picks bf16 only if the check's steps run at least this much faster than fp32


def native_bf16(device: torch.device) -> tuple:
    """(True/False, why): does this device compute bf16 natively? CUDA: compute capability 8 (Ampere) or
    later. CPU: the avx512_bf16 or amx_bf16 instructions (x86 Linux, read from /proc/cpuinfo)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    flags = cpu_flags()
    have = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"CPU with {' and '.join(have)} (torch CPU capability {capability})"
    return False, f"no avx512_bf16 or amx_bf16 on this CPU (torch CPU capability {capability}): bf16 is emulated"


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:  # not Linux: no way to tell here, so no native bf16 is assumed
        return set()


def autocast(precision: str, device: torch.device):
    """The context a step runs in: bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def choose_precision(requested: str, device: torch.device, work, repeats: int = 6, before: str | None = None) -> tuple:
    """(precision, why) for --precision auto|fp32|bf16. auto: bf16 where native_bf16 and work(precision),
    one unit of the real work (a training step on a copy of the model), runs FASTER times faster in bf16
    (medians of `repeats` timings after one warm-up, taken in turn); fp32 otherwise. before: the precision
    of a run being resumed, which auto keeps where it runs natively, so that the run goes on as it began."""
    if requested != "auto":
        return requested, "asked for with --precision"
    native, why = native_bf16(device)
    if before == "fp32" or (before == "bf16" and native):
        return before, f"as the run began (--resume); {why}"
    if not native:
        return "fp32", why
    times = {"fp32": [], "bf16": []}
    for i in range(repeats + 1):
        for precision in times:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            work(precision)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times[precision].append(time.perf_counter() - start)
    gain = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    verdict = "bf16" if gain >= FASTER else "fp32"
    return verdict, f"{why}; a check of {repeats} steps ran bf16 at {gain:.2f}x fp32's speed"


def training_check(model, x0: torch.Tensor, **cond):
    """work(precision) for choose_precision: one Algorithm 1 step (loss, backward, Adam) on a copy of
    the model with its own optimiser, so that the run itself is untouched by the check."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.eps_model.parameters(), lr=1e-6)
    state = torch.random.get_rng_state()

    def work(precision):
        with autocast(precision, x0.device):
            loss = model.loss(x0, **cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.random.set_rng_state(state)
    return work


def sampling_check(model, x_t: torch.Tensor, **cond):
    """work(precision) for choose_precision: one network call of a reverse step on x_t (n, C, H, W)."""
    t = torch.full((len(x_t),), model.T // 2, device=x_t.device)

    @torch.no_grad()
    def work(precision):
        with autocast(precision, x_t.device):
            model.predict_eps(x_t, t, **cond)
    return work


class SharedCores:
    """Threads that follow the load: every `every` seconds, count the cores of this process's CPU set
    that other processes kept busy (/proc/stat minus this process's own CPU time) and use the cores
    left, at least 1 and at most `most`. Two runs side by side settle at one thread each instead of
    spinning against each other. fixed=True (or no /proc/stat, e.g. macOS) keeps the threads as they are."""

    def __init__(self, most: int, fixed: bool = False, every: float = 1.0):
        self.most, self.every = most, every
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = None if fixed else self.reading()
        self.wanted = None  # a change is made when two readings in a row want it
        torch.set_num_threads(most)

    def reading(self):
        """(wall s, busy CPU s of our CPU set, own CPU s), or None without /proc/stat."""
        try:
            with open("/proc/stat") as f:
                rows = {line.split()[0]: line.split()[1:] for line in f if line.startswith("cpu")}
        except OSError:
            return None
        busy = 0
        for cpu in self.cpus:
            fields = [int(v) for v in rows.get(f"cpu{cpu}", [])]
            busy += sum(fields[:8]) - sum(fields[3:5])  # all but idle and iowait (steal included: not ours)
        own = os.times()
        return time.monotonic(), busy / self.tick, own.user + own.system

    def update(self) -> int | None:
        """Call between steps; returns the new thread count when it changed, else None."""
        if self.last is None or time.monotonic() - self.last[0] < self.every:
            return None
        now = self.reading()
        wall, busy, own = (b - a for a, b in zip(self.last, now))
        self.last = now
        others = max(0.0, (busy - own) / wall)  # cores kept busy by other processes
        threads = max(1, min(self.most, round(len(self.cpus) - others)))
        if threads == torch.get_num_threads():
            self.wanted = None
            return None
        if self.wanted != threads:
            self.wanted = threads
            return None
        torch.set_num_threads(threads)
        self.wanted = None
        return threads


def thread_policy(requested: str, before=None) -> tuple:
    """(SharedCores, why) for --threads auto|follow|N. auto: every core this process may use (or the count
    OMP_NUM_THREADS sets: torchrun sets 1 per process), fixed for the whole run; a resumed run keeps the count
    it began with (before), so that it goes on as the uninterrupted run would. N: N threads. follow: follow
    the load (SharedCores), faster on a shared machine, but the weights then depend on the load."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested == "follow":
        if not sys.platform.startswith("linux"):
            return SharedCores(torch.get_num_threads(), fixed=True), f"{torch.get_num_threads()} threads"
        return SharedCores(cores), f"up to {cores} threads, fewer while other processes keep cores busy"
    if requested != "auto":
        return SharedCores(int(requested), fixed=True), f"{requested} threads (--threads)"
    if isinstance(before, int) and not isinstance(before, bool) and 1 <= before <= 1024:
        return SharedCores(before, fixed=True), f"{before} threads, as the run began (--resume)"
    if os.environ.get("OMP_NUM_THREADS"):
        return SharedCores(torch.get_num_threads(), fixed=True), \
            f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    return SharedCores(cores, fixed=True), f"{cores} threads, kept for the whole run"


def pick_device(name: str) -> torch.device:
    """auto: cuda if available, else cpu; or a named device that must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda but no CUDA GPU is available: use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"--device {name}: only cpu and cuda are supported")
    return device

