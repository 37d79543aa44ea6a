"""Sample from a trained checkpoint, no training: python sample.py CONTENTS/model.pth [options].

Rebuilds the model from the checkpoint's own config (with its EMA weights when present) and
writes FILE.png (8 per row; class-conditional: one row per class unless --label; masks:
mask | sample | outline) and FILE.npz (images float32 (N, C, H, W) in [-1, 1], plus labels or
masks). --reverse also writes FILE_reverse.png: x_t and the network's x0_hat along the way.
Volumes also get FILE_slices.png, and with --nifti a folder FILE_nifti/ of .nii.gz files for a viewer.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import argparse
import os
import sys

import numpy as np
import torch

from data import load_dataset
from datatypes import DataError, normalize_to_neg_one_to_one, unnormalize_to_zero_to_one
from figures import class_grid_labels, sampler_text, save_grid, save_reverse_process, save_sample_grid, save_slice_strip
from formats import list_files, need_nibabel, nifti_bytes, read_resized
from models import SAMPLERS, check_sampler, draw, model_from_checkpoint, sample_shape
from plumbing.checkpoints import load_checkpoint
from plumbing.errors import Parser, run_script
from plumbing.files import check_outputs, mark, png_out, save_atomic, save_folder_atomic
from plumbing.progress import Progress
from plumbing.run import native_bf16, pick_device
from plumbing.settings import SEED_MAX
from process import repaint_times


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sample.py", description="Draw samples from a main.py checkpoint.")
    p.add_argument("checkpoint", help="a model.pth written by main.py")
    p.add_argument("--num-samples", type=int, help="default 64 (volumes 8); class-conditional: 8 per class")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="one of models.SAMPLERS (default: the run's)")
    p.add_argument("--steps", type=int, help="DDIM, Euler or Heun steps (default: the run's --sample-steps)")
    p.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like noise (default: the run's)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction,
                   help="clip x0_hat to [-1, 1] (default: the run's)")
    p.add_argument("--guidance", type=float, help="COND: guidance scale w (default: the run's)")
    p.add_argument("--label", type=int, help="COND class: draw only this class")
    p.add_argument("--mask-dir", help="mask-conditioned runs: a folder of PNG masks (default: the held-out masks of "
                   "the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output PNG (default: samples.png beside the checkpoint); the .npz goes beside it")
    p.add_argument("--reverse", action="store_true", help="also write FILE_reverse.png (x_t and x0_hat along the way)")
    p.add_argument("--nifti", action="store_true", help="volumes: also write each as FILE_nifti/images/NNNN.nii.gz "
                   "(and its condition mask in masks/), the layout --dataset nifti reads, for a viewer (needs nibabel)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights are saved")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast, fp32, or auto: bf16 where the hardware computes it natively")
    g = p.add_argument_group("inpainting (RePaint, Lugmayr et al. 2022)")
    g.add_argument("--inpaint", metavar="IMAGE", help="regenerate the --region of this image, keep the rest")
    g.add_argument("--region", metavar="MASK", help="an image of the region to regenerate (white) and keep (black)")
    g.add_argument("--cond-mask", metavar="MASK", help="mask-conditioned models: the lesion mask the result should "
                   "have, or 'none' for no lesion (a pseudo-healthy image)")
    g.add_argument("--jump-length", type=int, default=10, help="RePaint's j: steps per resampling block")
    g.add_argument("--jump-count", type=int, default=10, help="RePaint's r: walks per block (1: no resampling)")
    return p


def load_masks(config: dict, mask_dir: str | None) -> torch.Tensor:
    """(M, 1, H, W) masks in {0, 1}: PNGs from mask_dir resized to the model's size, or the held-out masks."""
    size = config["image_size"]
    if mask_dir and config.get("dims", 2) == 3:
        raise DataError("--mask-dir holds 2D mask images and this model draws volumes: leave it out to use the "
                        "held-out 3D masks of its data")
    if mask_dir:
        if not os.path.isdir(mask_dir) or not list_files(mask_dir):
            raise DataError(f"--mask-dir {mask_dir} holds no mask images (.png, .jpg, .tif)")
        return torch.from_numpy(read_resized(list(list_files(mask_dir).values()), size, "mask"))[:, None]
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
    elif args.mask_dir is not None:
        raise DataError("--mask-dir needs a mask-conditioned checkpoint (trained with --cond mask)")
    return n or (8 if config.get("dims", 2) == 3 else 64), cond


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_samples is not None and not 1 <= args.num_samples <= 100_000:
        p.error("--num-samples must lie in 1..100000")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must lie in 0..{SEED_MAX}")
    if (args.inpaint is None) != (args.region is None):
        p.error("--inpaint IMAGE and --region MASK go together")
    if not (1 <= args.jump_length <= 1000 and 1 <= args.jump_count <= 100):
        p.error("--jump-length must lie in 1..1000 and --jump-count in 1..100")
    if args.cond_mask is not None and args.inpaint is None:
        p.error("--cond-mask applies to --inpaint (sampling takes --mask-dir)")
    if args.guidance is not None and not 0 <= args.guidance <= 100:  # main.py's bounds (nan fails them too)
        p.error(f"--guidance must be a finite number in 0..100, got {args.guidance}")
    if args.inpaint is not None:  # RePaint walks every step of its own schedule
        unused = [o for o, v in (("--reverse", args.reverse), ("--sampler", args.sampler), ("--steps", args.steps),
                                 ("--eta", args.eta), ("--nifti", args.nifti), ("--mask-dir", args.mask_dir)) if v]
        if unused:
            p.error(f"{', '.join(unused)} do{'es' * (len(unused) == 1)} not apply to --inpaint (RePaint walks every "
                    "step of its own schedule: --jump-length, --jump-count): leave them out")
    run_script(p, run, args, memory="lower --num-samples (drawn in one batch), or use --device cpu")


def outputs(args) -> dict:
    """{option: path} of every file this run writes, checked before any sample is drawn."""
    if not os.path.isfile(args.checkpoint):  # first: the default --out lies beside it
        raise DataError(f"no checkpoint at {args.checkpoint} (no such file, or not a regular file): train one with "
                        "main.py first, or check the path")
    out = png_out("--out", args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "samples.png"))
    files = {"--out": out, "--out (its .npz)": os.path.splitext(out)[0] + ".npz"}
    if args.reverse:
        files["--out (its _reverse.png)"] = os.path.splitext(out)[0] + "_reverse.png"
    files["--out (its _slices.png, for volumes)"] = os.path.splitext(out)[0] + "_slices.png"
    if args.nifti:
        need_nibabel()
        folder = os.path.splitext(out)[0] + "_nifti"
        if os.path.lexists(folder):  # a folder of volumes (or a link) is never merged into or replaced
            raise DataError(f"--nifti would write into {folder}, which exists: move it or choose another --out")
        files["--out (its _nifti folder)"] = folder
    inputs = [args.checkpoint, *(list_files(args.mask_dir).values() if args.mask_dir and
                                 os.path.isdir(args.mask_dir) else []),
              *(f for f in (args.inpaint, args.region, args.cond_mask) if f and f != "none")]
    check_outputs(files, inputs)
    return files


def run(args) -> None:
    files = outputs(args)
    ckpt = load_checkpoint(args.checkpoint)
    config, device = ckpt["config"], pick_device(args.device)
    model = model_from_checkpoint(ckpt, device, use_ema=not args.no_ema, path=args.checkpoint)
    sampler = args.sampler or (config["sampler"] if config.get("sampler") in model.samplers else model.samplers[0])
    check_sampler(model, sampler, **{"--steps": args.steps, "--eta": args.eta})
    steps = config.get("sample_steps", 50) if args.steps is None else args.steps
    eta = config.get("sample_eta", 0.0) if args.eta is None else args.eta
    if not 0 <= eta <= 1:
        raise DataError("--eta must lie in [0, 1]")
    if args.clip_x0 is not None:
        model.clip_x0 = args.clip_x0
    if not 1 <= steps <= model.T:  # Algorithm 2 takes all T steps, but a wrong --steps is still told
        raise DataError(f"--steps must lie in 1..{model.T} (T of this model)")
    if args.guidance is not None:
        if config.get("cond") != "class":
            raise DataError("--guidance needs a class-conditional (COND) checkpoint")
        model.guidance_scale = args.guidance
    if args.nifti and config.get("dims", 2) != 3:
        raise DataError("--nifti writes volumes and this model draws 2D images: use the .npz or the .png")
    if args.inpaint and config.get("dims", 2) == 3:
        raise DataError("--inpaint reads a 2D image and this model draws volumes: inpainting volumes is not "
                        "supported yet")
    if args.inpaint:
        return inpaint(args, model, config, device, files["--out"])
    n, cond = conditions(args, config, args.num_samples)
    out = files["--out"]
    shape = sample_shape(config)
    g = torch.Generator(device).manual_seed(args.seed)
    reverse = Reverse() if args.reverse else None
    weights = "shipped EMA" if config.get("shipped") else "EMA" if ckpt.get("ema") and not args.no_ema else "raw"
    how = sampler_text(sampler, steps, eta, T=model.T) + (", clipped x0" if model.clip_x0 else "")
    guided = f", guidance w={model.guidance_scale:g}" if config["cond"] == "class" else ""
    title = f"{config['model']}, epoch {ckpt.get('epoch')}: {how}{guided}"
    print(f"{n} samples from {args.checkpoint} (epoch {ckpt.get('epoch')}, {weights} weights) by {how}", flush=True)
    given = {k: v.to(device) for k, v in cond.items()}
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16(device))
    print(f"precision {'bf16' if bf16 else 'fp32'} ({'asked for' if args.precision != 'auto' else 'by the hardware'})",
          flush=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        x = draw(model, n, shape, sampler=sampler, steps=steps, eta=eta, generator=g, progress=True,
                 on_step=reverse, **given).float()
    save_samples(x.cpu(), cond, out, nifti=args.nifti, source=config, title=title)
    if reverse is not None:
        save_reverse_process(reverse.shown(), x.cpu(), model.T, path=os.path.splitext(out)[0] + "_reverse.png")
        print(f"wrote {os.path.splitext(out)[0]}_reverse.png", flush=True)


class Reverse:
    """on_step for --reverse: (i, x_t, x0_hat) of the first `rows` samples at every k-th step the sampler
    visits, on the CPU; k doubles whenever more than 2 * `shown` are kept, so that any sampler and any T keep
    a few dozen steps at most. shown(): `shown` of them, evenly spread from the first step."""

    def __init__(self, shown: int = 10, rows: int = 4):
        self.kept, self.every, self.seen, self.want, self.rows = [], 1, 0, shown, rows

    def __call__(self, i: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
        if self.seen % self.every == 0:
            self.kept.append((i, x_t[:self.rows].float().cpu(), x0_hat[:self.rows].float().cpu()))
            if len(self.kept) > 2 * self.want:
                self.kept, self.every = self.kept[::2], 2 * self.every
        self.seen += 1

    def shown(self) -> list:
        picks = sorted({round(j * (len(self.kept) - 1) / max(1, self.want - 1)) for j in range(self.want)})
        return [self.kept[j] for j in picks]


def read_one(path: str, size: int, mode: str, what: str) -> tuple:
    """One image file at the model's size: ((1, C, H, W) tensor, its (H, W) on disk)."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} is not a file")
    sizes = []
    a = torch.from_numpy(read_resized([path], size, mode, sizes=sizes))
    return (a[:, None] if a.dim() == 3 else a.permute(0, 3, 1, 2)), sizes[0]


def inpaint(args, model, config: dict, device, out: str) -> None:
    """--inpaint IMAGE --region MASK: n RePaint results (DDPM.inpaint); the figure shows image | region |
    (condition mask |) results, and out's .npz holds the results as images."""
    size = config["image_size"]
    image, image_hw = read_one(args.inpaint, size, "L" if config["in_channels"] == 1 else "RGB", what="--inpaint")
    region, region_hw = read_one(args.region, size, "mask", what="--region")
    if region_hw != image_hw:
        raise DataError(f"--region is {region_hw[0]}x{region_hw[1]} but --inpaint is {image_hw[0]}x{image_hw[1]}: "
                        "the region must have its image's size")
    if not region.any():
        raise DataError(f"--region {args.region} marks nothing to regenerate (no white pixels once resized to the "
                        f"model's {size}x{size}): mark a larger area")
    image = normalize_to_neg_one_to_one(image)
    cond, shown = {}, [image, normalize_to_neg_one_to_one(region).expand_as(image)]
    if config["cond"] == "mask":
        if args.cond_mask is None:
            raise DataError("this model is mask-conditioned: pass --cond-mask MASK (the lesion the result should "
                            "have) or --cond-mask none (no lesion)")
        cond_mask, mask_hw = (torch.zeros_like(region), image_hw) if args.cond_mask == "none" else \
            read_one(args.cond_mask, size, "mask", what="--cond-mask")
        if mask_hw != image_hw:  # as for --region: a mask of another image is never resized to fit
            raise DataError(f"--cond-mask is {mask_hw[0]}x{mask_hw[1]} but --inpaint is {image_hw[0]}x{image_hw[1]}: "
                            "the condition mask must have its image's size")
        cond["mask"], shown = cond_mask, [*shown, normalize_to_neg_one_to_one(cond_mask).expand_as(image)]
    elif args.cond_mask is not None:
        raise DataError("--cond-mask needs a mask-conditioned (--cond mask) checkpoint")
    if args.label is not None:
        if config["cond"] != "class" or not 0 <= args.label < config["num_classes"]:
            raise DataError("--label needs a class-conditional checkpoint and a class it has")
        cond["y"] = torch.tensor([args.label])
    n = args.num_samples or 4
    g = torch.Generator(device).manual_seed(args.seed)
    print(f"{n} inpaintings of {args.inpaint} by RePaint (T={model.T}, jump length {args.jump_length}, "
          f"{args.jump_count} walks per block)", flush=True)
    x0, keep = image.repeat(n, 1, 1, 1).to(device), (1 - region).repeat(n, 1, 1, 1).to(device)
    bar = Progress(len(repaint_times(model.T, args.jump_length, args.jump_count)) - 1, "inpainting (RePaint)", "steps")
    x = model.inpaint(x0, keep, jump_length=args.jump_length, jump_count=args.jump_count, generator=g,
                      on_step=lambda k, total: bar.at(k),
                      **{k: v.repeat(n, *[1] * (v.dim() - 1)).to(device) for k, v in cond.items()}).cpu()
    bar.close()
    if not torch.isfinite(x).all():
        raise DataError("the inpainted images are not finite (NaN/inf): this checkpoint's network diverged")
    heads = ["image", "region", *(["cond. mask"] if "mask" in cond else []), *["inpainted"] * n]
    save_grid(torch.cat([*shown, x]), out, nrow=len(shown) + n, col_labels=heads if x.dim() == 4 else None)
    write_images_npz(x, {}, os.path.splitext(out)[0] + ".npz")
    print(f"wrote {out} ({' | '.join(['image', 'region', *(['condition mask'] if 'mask' in cond else [])])} | "
          f"{n} results) and {os.path.splitext(out)[0]}.npz", flush=True)


def write_images_npz(x: torch.Tensor, cond: dict, npz: str, source: dict | None = None) -> None:
    """images float32 (N, C, H, W) in [-1, 1], plus labels or masks, atomically; source (the run's config): also
    the dataset and data_dir it trained on, as strings, so that metrics.py scores them against the same data."""
    arrays = {"images": x.float().clamp(-1, 1).numpy()}
    if source is not None:
        arrays.update({k: np.array(str(source[k])) for k in ("dataset", "data_dir") if source.get(k) is not None})
    if "y" in cond:
        arrays["labels"] = cond["y"].numpy().astype(np.int64)
    if "mask" in cond:
        arrays["masks"] = cond["mask"].numpy().astype(np.float32)

    def write(path):
        with open(path, "wb") as f:
            np.savez(f, **arrays, written_by=np.array(mark()))  # plumbing/files.py: this project's output here
    save_atomic(write, npz, ours_only=True)


def save_samples(x: torch.Tensor, cond: dict, out: str, nifti: bool = False, source: dict | None = None,
                 title: str | None = None) -> None:
    """out (grid, 8 per row or mask triplets) and out's .npz: images float32 (N, C, H, W) in [-1, 1],
    plus labels or masks. Non-finite samples are refused, not saved as black cells."""
    if not torch.isfinite(x).all():
        raise DataError("the samples are not finite (NaN/inf): this checkpoint's network diverged")
    save_sample_grid(x, out, masks=cond.get("mask"), labels=cond.get("y"), title=title)
    npz = os.path.splitext(out)[0] + ".npz"
    write_images_npz(x, cond, npz, source=source)
    print(f"wrote {out} and {npz}", flush=True)
    if x.dim() == 5:  # volumes: also a strip of axial slices through each
        strip = os.path.splitext(out)[0] + "_slices.png"
        save_slice_strip(x, strip)
        print(f"wrote {strip} (axial slices through the first volumes)", flush=True)
    if nifti:
        save_nifti(x, cond, os.path.splitext(out)[0] + "_nifti")


def save_nifti(x: torch.Tensor, cond: dict, folder: str) -> None:
    """Volumes (N, 1, D, H, W) in [-1, 1] as folder/images/NNNN.nii.gz with intensities in [0, 1], and their
    condition masks as folder/masks/NNNN.nii.gz: the layout --dataset nifti and viewers read, written whole or
    not at all (files.save_folder_atomic)."""
    parts = {"images": unnormalize_to_zero_to_one(x)[:, 0], "masks": cond["mask"][:, 0] if "mask" in cond else None}

    def write(staging):
        for part, volumes in parts.items():
            if volumes is None:
                continue
            os.mkdir(os.path.join(staging, part))
            for i, v in enumerate(volumes.float().numpy()):
                with open(os.path.join(staging, part, f"{i:04d}.nii.gz"), "wb") as f:
                    f.write(nifti_bytes(v))
    save_folder_atomic(write, folder)
    print(f"wrote {folder}/ ({len(x)} volumes{' and their masks' if 'mask' in cond else ''} as .nii.gz)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
