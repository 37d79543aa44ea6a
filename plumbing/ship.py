"""Small weights to ship: python -m plumbing.ship RUN/model.pth weights/NAME.pth [--note TEXT].

The run's config, its last scores and the weights samples are drawn with (the EMA's), in the checkpoint layout
that every script loads: a quarter of a main.py checkpoint. Not a run (--resume refuses it); never replaces a file."""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import os
import sys

from datatypes import DataError
from plumbing.checkpoints import load_checkpoint, save_tensors
from plumbing.errors import Parser, run_script
from plumbing.files import save_atomic
from plumbing.settings import option, problems


def shipped(ckpt: dict, note: str, half: bool = False, sample_steps: int | None = None) -> dict:
    """The checkpoint a user samples from. half: the weights as float16 (loaded into the float32 network).
    sample_steps: the steps sample.py takes unless told (None: the run's own)."""
    weights = ckpt["ema"]["weights"] if ckpt.get("ema") else ckpt["model"]
    weights = {k: v.half() if half else v.clone() for k, v in weights.items()}
    config = {**ckpt["config"], "shipped": note}
    if sample_steps is not None:
        config["sample_steps"] = sample_steps
    return {"model": weights, "ema": None, "epoch": ckpt.get("epoch", 0), "config": config,
            "metrics": ckpt.get("metrics", [])[-1:], "losses": []}


def run(args) -> None:
    if os.path.lexists(args.out):  # a dangling link too: nothing is written through it
        raise DataError(f"{args.out} exists: choose another name (shipped weights are never replaced)")
    if not args.out.endswith(".pth") or args.out.endswith(os.sep):
        raise DataError(f"{args.out!r} is not a file name ending in .pth: name the file to write, e.g. "
                        "weights/mnist_ddpm.pth")
    out = shipped(load_checkpoint(args.checkpoint), args.note, args.half, args.sample_steps)
    found = problems(out["config"])  # --sample-steps checked like every setting: 1..T
    if found:
        key, problem = found[0]
        raise DataError(f"{option(key)} {out['config'][key]} {problem}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_atomic(lambda tmp: save_tensors(out, tmp), args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB: epoch {out['epoch']}, "
          f"{sum(v.numel() for v in out['model'].values()):,} weights)")


def main(argv=None) -> None:
    p = Parser(prog="python -m plumbing.ship", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a model.pth written by main.py")
    p.add_argument("out", help="the file to write, e.g. weights/mnist_ddpm.pth (never replaced)")
    p.add_argument("--note", default="", help="how the run was made (kept in the config as 'shipped')")
    p.add_argument("--sample-steps", type=int, help="the steps sample.py takes from these weights unless told "
                   "(default: the run's --sample-steps)")
    p.add_argument("--half", action="store_true", help="store the weights as float16: half the size")
    run_script(p, run, p.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
