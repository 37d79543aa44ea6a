"""Every setting a run is made of, with its type and bounds: main.py checks its command line with it, every script a
checkpoint's config before anything is allocated. Names (a process, a network) are checked by their registries
(models.build_model). No torch here."""
import math

SEED_MAX = 2 ** 32 - 1
TINY, UNIT = 5e-324, 1 - 2 ** -53  # the smallest float above 0, the largest below 1: (0, 1) is [TINY, UNIT]


def number(kind, lo, hi, bounds: str = "", hint: str = "", off=None):
    """A checker of v: None, off, or a finite number of kind (int: whole, never a bool) in lo..hi (bounds: the
    interval in words, default lo..hi). It returns what is wrong, or None."""
    def check(v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)):
            return f"must be a {'whole' if kind is int else 'finite'} number in {bounds or f'{lo}..{hi}'}"
        return None if lo <= v <= hi or v == off else f"must lie in {bounds or f'{lo}..{hi}'}{hint}"
    return check


def whole(lo: int, hi: int, hint: str = ""):
    return number(int, lo, hi, hint=hint)


def real(lo: float, hi: float, bounds: str, hint: str = "", off=None):
    return number((int, float), lo, hi, bounds, hint, off)


def numbers(kind, n_min: int, n_max: int, lo, hi, what: str):
    """A checker of v: a list of n_min..n_max numbers of kind in lo..hi."""
    return lambda v: None if isinstance(v, (list, tuple)) and n_min <= len(v) <= n_max and all(
        c is not None and number(kind, lo, hi)(c) is None for c in v) else f"must be {what}"


def betas(v):
    """A checker: the two ends of the linear schedule, 0 < BETA_1 <= BETA_T < 1."""
    ok = numbers(float, 2, 2, TINY, UNIT, "")(v) is None and v[0] <= v[1]
    return None if ok else "needs 0 < BETA_1 <= BETA_T < 1"


def text(v):
    return None if v is None or isinstance(v, str) else "must be a text (a path or name)"


def flag(v):
    return None if v is None or isinstance(v, bool) else "must be true or false"


# Every setting of a run: its check, and what a change of it means for --resume. "arch": it shapes the network
# or the process, "train": it changes what training does (--resume refuses a change of either, and the data the
# run trains on is recorded as data_id), "run": it may change between a run and its continuation (--epochs ...).
SETTINGS = {
    "model": (text, "arch"), "dataset": (text, "arch"), "net": (text, "arch"), "schedule": (text, "arch"),
    "loss": (text, "arch"), "cond": (text, "arch"), "sampler": (text, "run"),
    "epochs": (whole(1, 100_000), "run"), "batch_size": (whole(1, 4096), "train"),
    "warmup": (whole(0, 1_000_000, " steps"), "train"), "n_T": (whole(2, 10_000), "arch"),
    "sample_steps": (whole(1, 10_000), "run"), "num_samples": (whole(1, 10_000), "run"),
    "eval_samples": (number(int, 2, 10_000, "0 (off) or 2..10000", off=0), "run"),
    "limit": (whole(1, 10 ** 9), "train"), "sample_every": (whole(1, 100_000), "run"),
    "image_size": (whole(4, 512), "arch"), "dims": (whole(2, 3), "arch"), "seed": (whole(0, SEED_MAX), "train"),
    "in_channels": (whole(1, 3), "arch"), "channels": (whole(1, 3), "run"), "num_classes": (whole(0, 1000), "arch"),
    "cond_channels": (whole(0, 1), "arch"), "unet_version": (whole(1, 2), "arch"),
    "lr": (real(TINY, 1, "(0, 1]", ": Adam diverges far below 1 already (try 1e-3)"), "train"),
    "ema_decay": (real(0, UNIT, "[0, 1)"), "train"), "lr_decay": (real(0, 1, "[0, 1]"), "train"),
    "min_snr": (real(0.01, 1e4, "0 (off) or 0.01..10000", " (Hang et al. use 5; below 0.01 the weights are so "
                     "small that nothing trains)", off=0), "train"),
    "sample_eta": (real(0, 1, "[0, 1]"), "run"), "theta0": (real(TINY, 1e6, "(0, 1e6]"), "arch"),
    "p_uncond": (real(0, 1, "[0, 1]"), "train"), "guidance": (real(0, 100, "0..100"), "run"),
    "betas": (betas, "arch"),
    "unet_widths": (numbers(int, 2, 7, lo=1, hi=1024, what="2 to 7 whole numbers in 1..1024 (n widths: n - 1 levels)"),
                    "arch"),
    "attention_res": (numbers(int, 0, 8, lo=1, hi=512, what="at most 8 feature-map sides in 1..512"), "arch"),
    "augment": (flag, "train"), "clip_x0": (flag, "run"), "paper_settings": (flag, "run"), "data_id": (text, "train"),
    "data_dir": (text, "run"), "data_path": (text, "run"), "out": (text, "run"), "device": (text, "run"),
}
RESUME_KEEPS = tuple(key for key, (_, kind) in SETTINGS.items() if kind != "run")  # --resume refuses a change
# What a checkpoint's config must hold to rebuild its model and draw from it.
REQUIRED = ("model", "net", "n_T", "in_channels", "image_size", "num_classes", "cond_channels")


def option(key: str) -> str:
    """The command-line option of a config key: n_T -> --n-T."""
    return "--" + key.replace("_", "-")


NULLABLE = ("limit", "channels", "cond", "data_path", "out", "device")  # settings that may be None (not given)


def problems(values: dict) -> list:
    """[(key, what is wrong)] for the known keys in values, then the rules that link several keys."""
    found = [(k, "must be given") for k in SETTINGS if k in values and values[k] is None and k not in NULLABLE]
    found += [(k, msg) for k, (check, _) in SETTINGS.items() if k in values for msg in [check(values[k])] if msg]
    get = values.get
    if not found and get("sample_steps") and get("n_T") and get("sample_steps") > get("n_T"):
        found.append(("sample_steps", "must lie in 1..T (--n-T)"))
    if not found and get("cond") == "class" and not get("num_classes", 1):
        found.append(("num_classes", "must be at least 1 for --cond class"))
    if not found and get("cond") == "mask" and get("cond_channels", 1) != 1:
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
