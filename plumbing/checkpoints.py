"""Checkpoints that load safely: tensors and plain containers only (weights_only=True), never code, and
everything in them checked like the command line (settings.py) before anything is built."""
import io
import math
import os

import torch

from datatypes import DataError, cause
from plumbing.settings import checkpoint_problem, real, whole


def save_tensors(obj, path: str) -> None:
    """torch.save into memory, then one plain write: a full disk is an OSError (ENOSPC), never a failure inside
    torch's zip writer. Used through stage or save_atomic (files.py)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by main.py, loaded with weights_only=True and checked like the command line before
    anything is built: a file that is not one, or holds an edited config, epoch, losses or weights: DataError."""
    if not os.path.isfile(path):
        raise DataError(f"no checkpoint at {path} (no such file, or not a regular file): train one with main.py "
                        "first, or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path} is not a checkpoint this project can load safely ({cause(e)})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "config" not in ckpt:
        raise DataError(f"{path} is not a main.py checkpoint (no model weights or config in it)")
    is_count = lambda v: v is not None and whole(0, 2 ** 62)(v) is None  # noqa: E731
    is_number = lambda v: v is not None and real(-math.inf, math.inf, "any")(v) is None  # noqa: E731
    epoch, ema, losses, metrics = ckpt.get("epoch", 0), ckpt.get("ema"), ckpt.get("losses", []), ckpt.get("metrics", [])
    ema_ok = ema is None or (isinstance(ema, dict) and "weights" in ema and is_count(ema.get("n")))
    rows_ok = isinstance(losses, list) and all(isinstance(r, (list, tuple)) and len(r) == 3 and is_count(r[0])
                                               and is_count(r[1]) and is_number(r[2]) for r in losses)
    metrics_ok = isinstance(metrics, list) and all(isinstance(m, dict) and is_count(m.get("epoch")) and all(
        isinstance(k, str) and (v is None or is_number(v) or (k == "sampler" and isinstance(v, str)))
        for k, v in m.items()) for m in metrics)
    checks = [(is_count(epoch) and epoch <= 100_000, f"its epoch {epoch!r} is not a whole number in 0..100000: the "
               "checkpoint was edited"),
              (ema_ok, "its EMA entry has no weights and update count (a whole number, at least 0): the checkpoint "
               "was edited or damaged; sample with --no-ema, or retrain"),
              (rows_ok and metrics_ok, "its losses or metrics are not the lists of numbers main.py writes: the "
               "checkpoint was edited")]
    problem = checkpoint_problem(ckpt["config"], path) or next((f"{path}: {m}" for ok, m in checks if not ok), None)
    if problem is not None:
        raise DataError(problem)
    check_weights(ckpt["model"], path, "weights")
    if ema is not None:
        check_weights(ema["weights"], path, "EMA weights")
    return ckpt


def check_weights(weights, path: str, what: str) -> None:
    """A state dict of finite, real floating-point tensors, or DataError."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise DataError(f"{path}: its {what} are not a dict of named tensors: the checkpoint was edited or damaged")
    kind = next((k for k, v in weights.items() if not v.is_floating_point()), None)
    if kind is not None:  # the networks hold real floating-point weights only
        raise DataError(f"{path}: its {what} hold {weights[kind].dtype} values (e.g. {kind}), where the networks have "
                        "real floating-point weights: the checkpoint was edited or damaged; retrain")
    bad = next((k for k, v in weights.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise DataError(f"{path}: its {what} hold NaN or inf (e.g. {bad}): that run diverged; use an earlier "
                        "checkpoint or retrain with a lower --lr")


def load_weights(net: torch.nn.Module, weights: dict, where: str) -> None:
    """load_state_dict, a mismatch told in one line ("N tensors differ, e.g. `name` (16, 1, 3, 3) vs ..."); a
    network that renamed its parameters maps older names first (its renamed_levels, e.g. unet.UNet)."""
    if hasattr(net, "renamed_levels"):
        weights = net.renamed_levels(weights)
    expected = net.state_dict()
    differ = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if differ or missing or extra:
        k = (differ or missing or extra)[0]
        example = f"`{k}` {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" if differ else \
            f"`{k}` {'missing' if missing else 'not in this network'}"
        raise DataError(f"{where}: {len(differ) + len(missing) + len(extra)} tensors differ from the network its "
                        f"config describes, e.g. {example}")
    net.load_state_dict(weights)
