"""Does synthetic data help? python -m bench.synthetic_gain COND_CHECKPOINT --data-dir DIR [--k 25 50 0] [--m 100]

A mask-conditioned COND model (main.py COND --dataset folder) makes M synthetic image/mask pairs: masks
drawn from the real training masks, randomly flipped and shifted (data.augment), images drawn by
the model for them (DDIM). Then the segmenter of metrics.py is trained on K real training pairs alone,
and on the same K pairs plus the M synthetic ones (half of every batch), and scored by Dice on the
held-out real slices, which neither the generator nor any segmenter saw. Per K (0: all), the mean and
spread over --seeds seeds, printed as a table and drawn as FILE.png. Nothing here is a test.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import statistics
import sys

import torch

from data import augment, load_dataset
from datatypes import DataError
from metrics import dice, segment, train_segmenter
from models import draw, model_from_checkpoint, sample_shape
from plumbing.checkpoints import load_checkpoint
from plumbing.errors import Parser, run_script
from plumbing.files import check_outputs, png_out
from plumbing.run import pick_device


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.synthetic_gain", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a mask-conditioned COND model.pth (main.py COND --dataset folder)")
    p.add_argument("--data-dir", required=True, help="the folder it was trained on (images/ and masks/)")
    p.add_argument("--k", type=int, nargs="+", default=[25, 50, 0], help="real training pairs per segmenter (0: all)")
    p.add_argument("--m", type=int, default=100, help="synthetic pairs")
    p.add_argument("--seeds", type=int, default=3, help="repeats, each with its own K pairs and synthetic set")
    p.add_argument("--steps", type=int, default=500, help="segmenter training steps (batch 16)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per synthetic image")
    p.add_argument("--out", default="synthetic_gain.png", help="the figure; the table is printed")
    p.add_argument("--device", default="auto")
    return p


def synthetic_pairs(model, config: dict, masks: torch.Tensor, m: int, steps: int, seed: int, device) -> tuple:
    """m (image, mask) pairs: training masks drawn at random, flipped and shifted, then drawn by the model."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, cond = augment(torch.zeros(m, 1, *masks.shape[2:]), masks[torch.randint(0, len(masks), (m,), generator=g)],
                      max_degrees=0.0)
    shape = sample_shape(config)
    x = draw(model, m, shape, sampler="ddim", steps=steps, eta=1.0,
             generator=torch.Generator(device).manual_seed(seed), mask=cond.to(device))
    return x.cpu().clamp(-1, 1), cond


def run(args) -> None:
    out = png_out("--out", args.out)
    check_outputs({"--out": out}, [args.checkpoint])
    ckpt = load_checkpoint(args.checkpoint)
    config, device = ckpt["config"], pick_device(args.device)
    if config.get("cond") != "mask":
        raise DataError("synthetic_gain.py needs a mask-conditioned COND checkpoint (main.py COND --cond mask)")
    model = model_from_checkpoint(ckpt, device, path=args.checkpoint)
    size = config["image_size"]
    train = load_dataset("folder", args.data_dir, train=True, image_size=size, channels=config["in_channels"])
    held = load_dataset("folder", args.data_dir, train=False, image_size=size, channels=config["in_channels"])
    if train.masks is None:
        raise DataError(f"{args.data_dir} has no masks/: nothing to segment")
    ks = [k if 0 < k <= len(train.images) else len(train.images) for k in args.k]
    rows = {(k, with_synthetic): [] for k in ks for with_synthetic in (False, True)}
    for seed in range(args.seeds):
        print(f"seed {seed}: drawing {args.m} synthetic pairs", flush=True)
        synthetic = synthetic_pairs(model, config, train.masks, m=args.m, steps=args.sample_steps, seed=seed,
                                    device=device)
        for k in ks:
            pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(100 + seed))[:k]
            for with_synthetic in (False, True):
                net = train_segmenter(train.images[pick], train.masks[pick], args.steps, seed=seed, log=None,
                                      extra=synthetic if with_synthetic else None)
                d = dice(segment(net, held.images), held.masks).mean().item()
                rows[(k, with_synthetic)].append(d)
                print(f"  K={k} {'+ ' + str(args.m) + ' synthetic' if with_synthetic else 'real only':>15s}: "
                      f"held-out Dice {d:.4f}", flush=True)
    print(f"| K real | real only | + {args.m} synthetic | gain |")
    print("|---|---|---|---|")
    for k in ks:
        a, b = rows[(k, False)], rows[(k, True)]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"| {k} | {statistics.mean(a):.3f} +- {spread(a):.3f} | {statistics.mean(b):.3f} +- {spread(b):.3f} | "
              f"{statistics.mean(b) - statistics.mean(a):+.3f} |")
    save_gain_figure(rows, ks, args.m, n_held=len(held.images), path=out)
    print(f"wrote {out}")


def save_gain_figure(rows: dict, ks: list, m: int, n_held: int, path: str) -> None:
    from figures import pyplot, save_figure
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for with_synthetic, style, color in ((False, "o-", "C0"), (True, "s--", "C1")):
        means = [statistics.mean(rows[(k, with_synthetic)]) for k in ks]
        ax.plot(ks, means, style, color=color, label=f"+ {m} synthetic pairs" if with_synthetic else "real pairs only")
        for k in ks:  # each seed, in its series' colour
            ax.scatter([k] * len(rows[(k, with_synthetic)]), rows[(k, with_synthetic)], s=12, color=color, alpha=0.4)
    ax.set(xlabel="real training pairs K (log scale)", ylabel=f"Dice on {n_held} held-out real slices",
           title="segmenter trained with and without synthetic pairs", xscale="log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if not (all(0 <= k <= 100_000 for k in args.k) and 1 <= args.m <= 10_000 and 1 <= args.seeds <= 20
            and 1 <= args.steps <= 100_000 and 1 <= args.sample_steps <= 1000):
        p.error("--k 0..100000, --m 1..10000, --seeds 1..20, --steps 1..100000, --sample-steps 1..1000")
    run_script(p, run, args, memory="lower --m or --k")


if __name__ == "__main__":
    main(sys.argv[1:])
