"""Every setting a run is made of, with its type and bounds, checked in one place: main.py checks
its command line with it, and every script checks a checkpoint's config with it before anything is
allocated (an edited n_T of 10^9 or widths of 10^6 end here, in one line). No torch here."""
import math

from plumbing.catalog import REGISTRIES, known

SEED_MAX = 2 ** 32 - 1
NAMES = {"loss": ("l1", "l2"), "cond": (None, "class", "mask")}  # the rest: catalog.known


def whole(lo: int, hi: int, hint: str = "", allow_none: bool = False):
    """A checker: an integer (not a bool, not a float) in lo..hi."""
    def check(v):
        if v is None and allow_none:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            return f"must be a whole number in {lo}..{hi}"
        return None if lo <= v <= hi else f"must lie in {lo}..{hi}{hint}"
    return check


def real(ok, bounds: str, hint: str = ""):
    """A checker: a finite int or float v with ok(v) true; bounds says which, in words."""
    def check(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"must be a number in {bounds}"
        if not math.isfinite(v):
            return "must be a finite number"
        return None if ok(v) else f"must lie in {bounds}{hint}"
    return check


def one_of(key: str):
    def check(v):
        names = known(key) if key in REGISTRIES else NAMES[key]
        return None if isinstance(v, (str, type(None))) and v in names else \
            f"must be one of {', '.join(str(n) for n in names)}"
    return check


def flag(v):
    return None if isinstance(v, bool) else "must be true or false"


def text(v):
    return None if v is None or isinstance(v, str) else "must be a text (a path or name)"


def betas(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        return "must be two numbers BETA_1 BETA_T"
    if any(not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) for b in v):
        return "must be two finite numbers"
    return None if 0 < v[0] <= v[1] < 1 else "needs 0 < BETA_1 <= BETA_T < 1"


def widths(v):
    if not isinstance(v, (list, tuple)) or not 2 <= len(v) <= 7:
        return "must be 2 to 7 whole numbers C1 C2 ... (n widths: n - 1 levels)"
    if any(not isinstance(c, int) or isinstance(c, bool) for c in v):
        return "must be whole numbers"
    return None if all(1 <= c <= 1024 for c in v) else "must lie in 1..1024"


def sides(v):
    if not isinstance(v, (list, tuple)) or len(v) > 8:
        return "must be at most 8 feature-map sides"
    ok = all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 512 for c in v)
    return None if ok else "must be whole numbers in 1..512"


# Every setting of a run, in one list: its check, and what a change of it means for --resume. "arch": it
# shapes the network or the process, "train": it changes what training does (--resume refuses a change of
# either), "run": it may change between a run and its continuation (e.g. --epochs, --sampler).
SETTINGS = {
    "model": (one_of("process"), "arch"), "dataset": (one_of("dataset"), "arch"), "net": (one_of("net"), "arch"),
    "schedule": (one_of("schedule"), "arch"), "sampler": (one_of("sampler"), "run"), "loss": (one_of("loss"), "arch"),
    "cond": (one_of("cond"), "arch"), "epochs": (whole(1, 100_000), "run"), "batch_size": (whole(1, 4096), "train"),
    "warmup": (whole(0, 1_000_000, " steps"), "train"), "n_T": (whole(2, 10_000), "arch"),
    "sample_steps": (whole(1, 10_000), "run"), "num_samples": (whole(1, 10_000), "run"),
    "eval_samples": (whole(0, 10_000), "run"), "limit": (whole(1, 10 ** 9, allow_none=True), "train"),
    "image_size": (whole(4, 512), "arch"), "dims": (whole(2, 3), "arch"), "seed": (whole(0, SEED_MAX), "train"),
    "in_channels": (whole(1, 3), "arch"), "channels": (whole(1, 3, allow_none=True), "run"),
    "num_classes": (whole(0, 1000), "arch"), "cond_channels": (whole(0, 1), "arch"),
    "lr": (real(lambda v: 0 < v <= 1, "(0, 1]", ": Adam diverges far below 1 already (try 1e-3)"), "train"),
    "ema_decay": (real(lambda v: 0 <= v < 1, "[0, 1)"), "train"),
    "min_snr": (real(lambda v: v == 0 or 0.01 <= v <= 1e4, "0 (off) or 0.01..10000",
                     " (Hang et al. use 5; below 0.01 the weights are so small that nothing trains)"), "train"),
    "sample_eta": (real(lambda v: 0 <= v <= 1, "[0, 1]"), "run"),
    "theta0": (real(lambda v: 0 < v <= 1e6, "(0, 1e6]"), "arch"),
    "p_uncond": (real(lambda v: 0 <= v <= 1, "[0, 1]"), "train"),
    "guidance": (real(lambda v: 0 <= v <= 100, "0..100"), "run"),
    "betas": (betas, "arch"), "unet_widths": (widths, "arch"), "attention_res": (sides, "arch"),
    "unet_version": (whole(1, 2, " (unet.VERSIONS)"), "arch"),
    "augment": (flag, "train"), "sample_every": (whole(1, 100_000), "run"), "clip_x0": (flag, "run"),
    "paper_settings": (flag, "run"), "data_dir": (text, "run"), "data_path": (text, "run"), "out": (text, "run"),
    "device": (text, "run"),
}
CHECKS = {key: check for key, (check, _) in SETTINGS.items()}
ARCHITECTURE = tuple(key for key, (_, kind) in SETTINGS.items() if kind == "arch")
TRAINING = tuple(key for key, (_, kind) in SETTINGS.items() if kind == "train")
# What a checkpoint's config must hold to rebuild its model and draw from it (older checkpoints
# lack keys added later, e.g. unet_widths or min_snr: those fall back to the defaults at the time).
REQUIRED = ("model", "net", "n_T", "betas", "schedule", "in_channels", "image_size", "num_classes", "cond_channels")


def option(key: str) -> str:
    """The command-line option of a config key: n_T -> --n-T."""
    return "--" + key.replace("_", "-")


def problems(values: dict) -> list:
    """[(key, what is wrong)] for the known keys in values, then the rules that link several keys."""
    found = [(k, msg) for k, check in CHECKS.items() if k in values for msg in [check(values[k])] if msg]
    if found:
        return found
    get = values.get
    if get("eval_samples") == 1:
        found.append(("eval_samples", "must be 0 (off) or 2..10000"))
    if get("sample_steps") is not None and get("n_T") is not None and get("sample_steps") > get("n_T"):
        found.append(("sample_steps", "must lie in 1..T (--n-T)"))
    if get("cond") == "class" and not get("num_classes", 1):
        found.append(("num_classes", "must be at least 1 for --cond class"))
    if get("cond") == "mask" and get("cond_channels", 1) != 1:
        found.append(("cond_channels", "must be 1 for --cond mask"))
    return found


def checkpoint_problem(config, path: str) -> str | None:
    """One line for the first thing wrong with a checkpoint's config, or None if it can be rebuilt."""
    if not isinstance(config, dict):
        return f"{path} has no config dict: it was not written by main.py"
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        return f"{path}: its config lacks {', '.join(missing)}: it was not written by main.py, or was edited"
    found = problems(config)
    if not found:
        return None
    key, msg = found[0]
    return f"{path}: its config has {key}={config.get(key)!r}, which {msg}: the checkpoint was edited or damaged; " \
           "retrain it or restore the original"
