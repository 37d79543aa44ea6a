"""Sample from a trained checkpoint, no training: python sample.py CONTENTS/model.pth [options].

Rebuilds the model from the checkpoint's own config (with its EMA weights when present) and
writes FILE.png (8 per row; class-conditional: one row per class unless --label; masks:
mask | sample | outline) and FILE.npz (images float32 (N, C, H, W) in [-1, 1], plus labels or
masks). --reverse also writes FILE_reverse.png: x_t and the network's x0_hat along the way.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

from data import DataError, list_images, load_dataset, read_resized
from errors import Parser, run_script
from figures import class_grid_labels, mask_triplets, save_grid, save_reverse_process
from files import check_outputs, png_out, save_atomic
from models import draw, load_checkpoint, model_from_checkpoint, pick_device
from settings import SEED_MAX


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sample.py", description="Draw samples from a main.py checkpoint.")
    p.add_argument("checkpoint", help="a model.pth written by main.py")
    p.add_argument("--num-samples", type=int, help="default 64; class-conditional: 8 per class")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), help="default: the run's (ddim; ddpm for DDGM)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's --sample-steps)")
    p.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like noise (default: the run's)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction,
                   help="clip x0_hat to [-1, 1] (default: the run's)")
    p.add_argument("--guidance", type=float, help="COND: guidance scale w (default: the run's)")
    p.add_argument("--label", type=int, help="COND class: draw only this class")
    p.add_argument("--mask-dir", help="COND mask: a folder of PNG masks (default: the held-out masks of the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output PNG (default: samples.png beside the checkpoint); the .npz goes beside it")
    p.add_argument("--reverse", action="store_true", help="also write FILE_reverse.png (x_t and x0_hat along the way)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights are saved")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    return p


def load_masks(config: dict, mask_dir: str | None) -> torch.Tensor:
    """(M, 1, H, W) masks in {0, 1}: PNGs from mask_dir resized to the model's size, or the held-out masks."""
    size = config["image_size"]
    if mask_dir:
        if not os.path.isdir(mask_dir) or not list_images(mask_dir):
            raise DataError(f"--mask-dir {mask_dir} holds no mask images (.png, .jpg, .tif)")
        return torch.from_numpy(read_resized(list(list_images(mask_dir).values()), size, "mask"))[:, None]
    try:
        held_out = load_dataset(config["dataset"], config["data_dir"], train=False, image_size=size,
                                channels=config.get("channels"), data_path=config.get("data_path"), download=False)
    except DataError as e:
        raise DataError(f"this model needs masks and the training data's are not readable ({e}): "
                        "pass --mask-dir DIR") from e
    return held_out.masks


def conditions(args, config: dict, n: int | None) -> tuple:
    """(n, cond dict) for the checkpoint's kind of conditioning."""
    cond = {}
    if config["cond"] == "class":
        K = config["num_classes"]
        if args.label is not None and not 0 <= args.label < K:
            raise DataError(f"--label must lie in 0..{K - 1} for this model")
        if args.label is not None:
            n = n or 64
            cond["y"] = torch.full((n,), args.label)
        else:
            n = n or 8 * K
            cond["y"] = class_grid_labels(K).repeat(-(-n // (8 * K)))[:n]
    elif args.label is not None:
        raise DataError("--label needs a class-conditional (COND) checkpoint")
    if config["cond"] == "mask":
        masks = load_masks(config, args.mask_dir)
        n = n or len(masks)
        cond["mask"] = masks[torch.arange(n) % len(masks)]
    return n or 64, cond


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_samples is not None and not 1 <= args.num_samples <= 100_000:
        p.error("--num-samples must lie in 1..100000")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must lie in 0..{SEED_MAX}")
    run_script(p, run, args)


def outputs(args) -> dict:
    """{option: path} of every file this run writes, checked before any sample is drawn."""
    out = png_out("--out", args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "samples.png"))
    files = {"--out": out, "--out (its .npz)": os.path.splitext(out)[0] + ".npz"}
    if args.reverse:
        files["--out (its _reverse.png)"] = os.path.splitext(out)[0] + "_reverse.png"
    inputs = [args.checkpoint, *(list_images(args.mask_dir).values() if args.mask_dir and
                                 os.path.isdir(args.mask_dir) else [])]
    check_outputs(files, inputs)
    return files


def run(args) -> None:
    files = outputs(args)
    ckpt = load_checkpoint(args.checkpoint)
    config, device = ckpt["config"], pick_device(args.device)
    model = model_from_checkpoint(ckpt, device, use_ema=not args.no_ema, path=args.checkpoint)
    sampler = args.sampler or config.get("sampler", "ddpm" if config["model"] == "DDGM" else "ddim")
    steps = config.get("sample_steps", 50) if args.steps is None else args.steps
    eta = config.get("sample_eta", 0.0) if args.eta is None else args.eta
    if not 0 <= eta <= 1:
        raise DataError("--eta must lie in [0, 1]")
    if args.clip_x0 is not None:
        model.clip_x0 = args.clip_x0
    if sampler == "ddim" and not 1 <= steps <= model.T:
        raise DataError(f"--steps must lie in 1..{model.T} (T of this model)")
    if args.guidance is not None:
        if not (math.isfinite(args.guidance) and args.guidance >= 0) or config["model"] != "COND":
            raise DataError("--guidance needs a COND checkpoint and a finite w >= 0")
        model.guidance_scale = args.guidance
    n, cond = conditions(args, config, args.num_samples)
    out = files["--out"]
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    g = torch.Generator(device).manual_seed(args.seed)
    record = ()
    if args.reverse:
        visited = model.ddim_timesteps(steps) if sampler == "ddim" else list(range(model.T - 1, -1, -1))
        record = sorted({visited[round(j * (len(visited) - 1) / 9)] for j in range(10)}, reverse=True)
    weights = "EMA" if ckpt.get("ema") and not args.no_ema else "raw"
    how = f"DDIM, {steps} steps, eta {eta:g}" if sampler == "ddim" else f"Algorithm 2, {model.T} steps"
    how += ", clipped x0" if model.clip_x0 else ""
    print(f"{n} samples from {args.checkpoint} (epoch {ckpt.get('epoch')}, {weights} weights) by {how}", flush=True)
    result = draw(model, n, shape, sampler, steps, eta, g, record, progress=True,
                  **{k: v.to(device) for k, v in cond.items()})
    x, kept = result if record else (result, None)
    save_samples(x.cpu(), cond, out)
    if kept is not None:
        save_reverse_process(kept, x.cpu(), model.T, os.path.splitext(out)[0] + "_reverse.png")
        print(f"wrote {os.path.splitext(out)[0]}_reverse.png", flush=True)


def save_samples(x: torch.Tensor, cond: dict, out: str) -> None:
    """out (grid, 8 per row or mask triplets) and out's .npz: images float32 (N, C, H, W) in [-1, 1],
    plus labels or masks. Non-finite samples are refused, not saved as black cells."""
    if not torch.isfinite(x).all():
        raise DataError("the samples are not finite (NaN/inf): this checkpoint's network diverged")
    if "mask" in cond:
        save_grid(mask_triplets(x, cond["mask"]), out, nrow=6)
    else:
        save_grid(x, out, nrow=8)
    arrays = {"images": x.float().clamp(-1, 1).numpy()}
    if "y" in cond:
        arrays["labels"] = cond["y"].numpy().astype(np.int64)
    if "mask" in cond:
        arrays["masks"] = cond["mask"].numpy().astype(np.float32)

    def write_npz(path):
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    npz = os.path.splitext(out)[0] + ".npz"
    save_atomic(write_npz, npz)
    print(f"wrote {out} and {npz}", flush=True)

if __name__ == "__main__":
    main(sys.argv[1:])
