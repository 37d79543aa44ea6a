"""Train a diffusion model epoch by epoch: python main.py DDPM|DDGM|COND [options].

Writes into --out (default contents_<MODEL>/): image_ep{E:03d}.png per epoch, loss.csv,
loss_curve.png, metrics.csv (loss, seconds, fid), model.pth (atomic; --resume continues from
it), forward_diffusion.png, schedules.png and config.json. See README.md and `--help`.
"""
import argparse
import os
import sys
import time

import torch

from data import DATASETS, DataError, load_dataset
from figures import (
    class_grid_labels,
    mask_triplets,
    save_atomic,
    save_forward_diffusion,
    save_grid,
    save_loss_curve,
    save_schedules,
    write_json,
    write_loss_csv,
    write_metrics_csv,
)
from metrics import QualityScore, lesion_dice
from models import ARCHITECTURE, EMA, build_model, draw, load_checkpoint, pick_device
from progress import Progress
from unet import count_parameters

MODELS = ("DDPM", "DDGM", "COND")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line and exit code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    p = Parser(prog="main.py", description="Train DDPM (Ho et al. 2020), DDGM (Nachmani et al. 2021) "
               "or a conditional DDPM (COND) and write samples, losses and checkpoints.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=str.upper, choices=MODELS, metavar="MODEL", help="DDPM, DDGM or COND")
    p.add_argument("--dataset", default="mnist", choices=DATASETS, metavar="NAME",
                   help="mnist, shapes, phantom, folder, csv or a MedMNIST 2D name (pathmnist, ...)")
    p.add_argument("--data-dir", default="./data", help="where datasets are read from / downloaded to")
    p.add_argument("--data-path", help="the CSV file for --dataset csv")
    p.add_argument("--image-size", type=int, help="folder/phantom: resize to this (64); csv: side length (28)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder/csv: 1 grayscale or 3 RGB")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="EMA of the weights used for sampling, with warm-up (0 disables)")
    p.add_argument("--n-T", type=int, default=1000, help="number of diffusion steps T")
    p.add_argument("--betas", type=float, nargs=2, default=(1e-4, 0.02), metavar=("BETA_1", "BETA_T"))
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    p.add_argument("--net", choices=("cnn", "unet"), default="cnn",
                   help="cnn (the coursework CNN, fast epochs, learns slowly) or unet (digits sooner)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"),
                   help="per-epoch samples: ddim (Song et al., --sample-steps) or ddpm (Algorithm 2, T steps); "
                   "default ddim, ddpm for DDGM")
    p.add_argument("--sample-steps", type=int, help="DDIM steps for the per-epoch samples (default 50, at most T)")
    p.add_argument("--clip-x0", action="store_true",
                   help="clip the predicted x0 to [-1, 1] while sampling, as the authors' code does")
    p.add_argument("--eval-samples", type=int,
                   help="samples scored by metrics.py's fid each epoch (0: none); default 256, 64 with --sampler ddpm")
    p.add_argument("--out", help="output folder (default contents_<MODEL>)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=64, help="per-epoch grid size (COND class: 8 per class)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--resume", action="store_true", help="continue from <out>/model.pth")
    g = p.add_argument_group("DDGM")
    g.add_argument("--theta0", type=float, default=0.001, help="Gamma scale theta_0")
    g.add_argument("--loss", choices=("l1", "l2"), default="l2", help="DDGM loss norm")
    g = p.add_argument_group("COND")
    g.add_argument("--cond", choices=("class", "mask"), help="default: class if the data has labels, else mask")
    g.add_argument("--p-uncond", type=float, default=0.1, help="label-drop probability for guidance")
    g.add_argument("--guidance", type=float, default=2.0, help="guidance scale w (0: no guidance)")
    g.add_argument("--guidance-sweep", type=float, nargs="+", metavar="W",
                   help="after training, write guidance_w<W>.png for each w")
    return p


def check_args(args, p: Parser) -> None:
    """Impossible hyperparameters end here, with one line naming the fix."""
    beta_1, beta_T = args.betas
    if args.sampler is None:
        args.sampler = "ddpm" if args.model == "DDGM" else "ddim"
    if args.sample_steps is None:
        args.sample_steps = min(50, args.n_T)
    if args.eval_samples is None:
        args.eval_samples = 256 if args.sampler == "ddim" else 64
    checks = [(args.epochs >= 1, "--epochs must be at least 1"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (args.lr > 0, "--lr must be positive"),
              (0 <= args.ema_decay < 1, "--ema-decay must lie in [0, 1)"),
              (args.n_T >= 2, "--n-T must be at least 2"),
              (0 < beta_1 <= beta_T < 1, "--betas needs 0 < BETA_1 <= BETA_T < 1"),
              (1 <= args.sample_steps <= args.n_T, "--sample-steps must lie in 1..T (--n-T)"),
              (args.num_samples >= 1, "--num-samples must be at least 1"),
              (args.eval_samples == 0 or args.eval_samples >= 2, "--eval-samples must be 0 (off) or at least 2"),
              (args.limit is None or args.limit >= 1, "--limit must be at least 1"),
              (args.image_size is None or args.image_size >= 4, "--image-size must be at least 4"),
              (args.theta0 > 0, "--theta0 must be positive"),
              (0 <= args.p_uncond <= 1, "--p-uncond must lie in [0, 1]"),
              (args.guidance >= 0 and min(args.guidance_sweep or [0]) >= 0, "guidance scales must be >= 0"),
              (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other: pick one")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    if args.model != "COND" and (args.cond or args.guidance_sweep):
        p.error("--cond and --guidance-sweep apply to COND only")
    if args.model == "DDGM" and args.sampler == "ddim":
        p.error("DDIM is derived for Gaussian noise, not DDGM's Gamma noise: use --sampler ddpm")


def make_config(args, train_set) -> dict:
    """Everything needed to rebuild the model: the arguments plus what the data decided."""
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}
    N, C, H, W = train_set.images.shape  # count, channels, height, width
    cond = args.cond or (None if args.model != "COND" else "class" if train_set.labels is not None else "mask")
    if cond == "class" and train_set.labels is None:
        raise DataError(f"--cond class needs labels, and {args.dataset} has none: use --cond mask or labelled data")
    if cond == "mask" and train_set.masks is None:
        raise DataError(f"--cond mask needs masks, and {args.dataset} has none: use folder (with masks/) or phantom")
    if args.net == "unet" and (H % 4 or W % 4):
        raise DataError(f"--net unet needs image sides divisible by 4, got {H}x{W}: set --image-size")
    config.update(cond=cond, in_channels=C, image_size=H, betas=list(args.betas),
                  num_classes=int(train_set.labels.max()) + 1 if cond == "class" else 0,
                  cond_channels=1 if cond == "mask" else 0)
    return config


def sampling_setup(config: dict, held_out) -> dict:
    """The fixed conditions of the per-epoch draw: n samples, the first n_grid shown in the grid,
    the first eval_samples scored; class rows 0..K-1 (8 each) repeat, held-out masks cycle."""
    n_grid = 8 * config["num_classes"] if config["cond"] == "class" else config["num_samples"]
    n = max(n_grid, config["eval_samples"])
    cond, masks = {}, None
    if config["cond"] == "class":
        cond["y"] = class_grid_labels(config["num_classes"]).repeat(-(-n // n_grid))[:n]
    if held_out is not None and held_out.masks is not None:
        masks = held_out.masks[torch.arange(n) % len(held_out.masks)]
        if config["cond"] == "mask":
            cond["mask"] = masks
    return {"n": n, "n_grid": n_grid, "cond": cond, "masks": masks if config["dataset"] == "phantom" else None}


def sample_and_score(model, config, setup, path, device, score=None) -> dict:
    """Draw the per-epoch samples from fixed noise (same seed every call), save the grid, and
    return its metrics (fid, class_accuracy, Dice for phantom)."""
    g = torch.Generator(device).manual_seed(config["seed"] + 1)
    cond = {k: v.to(device) for k, v in setup["cond"].items()}
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    x = draw(model, setup["n"], shape, config["sampler"], config["sample_steps"], generator=g,
             progress=True, **cond).cpu()
    if not torch.isfinite(x).all():
        raise DataError(f"the samples for {path} are not finite (NaN/inf): the network or the settings diverged")
    k = setup["n_grid"]
    if config["cond"] == "mask":
        save_grid(mask_triplets(x[:min(k, 16)], setup["cond"]["mask"][:min(k, 16)]), path, nrow=6)
    else:
        save_grid(x[:k], path, nrow=8)
    metrics = {}
    if score is not None and config["eval_samples"]:
        n = config["eval_samples"]
        metrics.update(score(x[:n], setup["cond"]["y"][:n] if "y" in setup["cond"] else None))
    if setup["masks"] is not None:  # phantom: the lesion is the only bright region
        metrics["dice"] = round(lesion_dice(x, setup["masks"]), 4)
        metrics["dice_shuffled_masks"] = round(lesion_dice(x, setup["masks"].roll(1, dims=0)), 4)
    return metrics


def prepare(args, out: str):
    """Device, data (training set and held-out set), config, model, optimiser, EMA, and the state to
    continue from: {"epoch", "losses", "metrics"}, from out/model.pth with --resume."""
    device = pick_device(args.device)
    data_kw = {"data_dir": args.data_dir, "image_size": args.image_size, "channels": args.channels,
               "data_path": args.data_path}
    train_set = load_dataset(args.dataset, train=True, **data_kw)
    held_out = load_dataset(args.dataset, train=False, **data_kw) if args.dataset in ("phantom", "folder") else None
    if args.limit:
        train_set = type(train_set)(*(None if a is None else a[:args.limit] for a in train_set))
    config = make_config(args, train_set)
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.eps_model.parameters(), lr=args.lr)
    ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
    state = {"epoch": 0, "losses": [], "metrics": []}
    if args.resume:
        state = load_checkpoint(os.path.join(out, "model.pth"))
        for key in ARCHITECTURE:
            if state["config"].get(key) != config.get(key):
                raise DataError(f"--resume: {out}/model.pth was trained with {key}={state['config'].get(key)!r}, "
                                f"not {config.get(key)!r}: pass the same options or another --out")
        model.eps_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        elif ema is not None:  # a checkpoint from before EMA: start the average from its weights
            ema.model.eps_model.load_state_dict(state["model"])
    return device, train_set, held_out, config, model, optimizer, ema, state


def claim_out_folder(out: str, args) -> None:
    """A run folder belongs to one run: refuse to start afresh over a checkpoint unless --overwrite,
    which removes that run's epoch images and files first."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a folder: choose another --out")
    if args.resume or not os.path.exists(os.path.join(out, "model.pth")):
        return
    if not args.overwrite:
        raise DataError(f"{out}/ already holds a trained run (model.pth): continue it with --resume, "
                        "choose another --out, or replace it with --overwrite")
    for name in os.listdir(out):
        if name.startswith(("image_ep", "guidance_w")) or name in ("model.pth", "loss.csv", "metrics.csv"):
            os.remove(os.path.join(out, name))


def save_epoch(out: str, model, optimizer, ema, epoch: int, config: dict, losses: list, metrics: list) -> None:
    """loss.csv, loss_curve.png, metrics.csv and the self-describing checkpoint model.pth, all atomic."""
    write_loss_csv(losses, os.path.join(out, "loss.csv"))
    l1 = config["model"] == "DDGM" and config["loss"] == "l1"
    save_loss_curve(losses, metrics, os.path.join(out, "loss_curve.png"), "L1 loss" if l1 else "MSE loss")
    write_metrics_csv(metrics, os.path.join(out, "metrics.csv"))
    state = {"model": model.eps_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "ema": ema.state_dict() if ema is not None else None,
             "config": config, "losses": losses, "metrics": metrics}
    save_atomic(lambda p: torch.save(state, p), os.path.join(out, "model.pth"))


def train(args) -> None:
    """The whole run: per epoch, batches (Alg. 1), a sample figure with its scores, logs and a checkpoint."""
    out = args.out or f"contents_{args.model}"
    claim_out_folder(out, args)
    device, train_set, held_out, config, model, optimizer, ema, state = prepare(args, out)
    losses, metrics = state["losses"], state["metrics"]
    os.makedirs(out, exist_ok=True)
    steps = f"DDIM {args.sample_steps} steps" if args.sampler == "ddim" else f"Algorithm 2, {args.n_T} steps"
    print(f"{args.model} with {type(model.eps_model).__name__} ({count_parameters(model.eps_model):,} parameters) "
          f"on {args.dataset} ({len(train_set.images)} images {tuple(train_set.images.shape[1:])}), "
          f"T={model.T}, device {device}, samples by {steps}, writing {out}/", flush=True)
    score = None
    if args.eval_samples and train_set.labels is not None and args.dataset not in ("folder", "csv"):
        score = QualityScore(args.dataset, args.data_dir, image_size=args.image_size)
    write_json(config, os.path.join(out, "config.json"))
    x_all = train_set.images.to(device)
    y_all = train_set.labels.to(device) if config["cond"] == "class" else None
    m_all = train_set.masks.to(device) if config["cond"] == "mask" else None
    g = torch.Generator(device).manual_seed(args.seed)
    save_forward_diffusion(model, x_all[:8], os.path.join(out, "forward_diffusion.png"), g)
    save_schedules(args.n_T, args.schedule, args.betas, os.path.join(out, "schedules.png"))
    setup = sampling_setup(config, held_out)
    sampler = ema.model if ema is not None else model
    N, B = len(x_all), args.batch_size
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        torch.manual_seed(args.seed + epoch)  # a resumed run draws what an uninterrupted one would
        model.train()
        t0, epoch_losses = time.time(), []
        perm = torch.randperm(N, device=device)
        bar = Progress(range(0, N, B), -(-N // B), f"epoch {epoch}/{args.epochs}", "batches")
        for i in bar:
            idx = perm[i:i + B]
            cond = {k: v[idx] for k, v in (("y", y_all), ("mask", m_all)) if v is not None}
            loss = model.loss(x_all[idx], **cond)
            if not torch.isfinite(loss):
                raise DataError(f"the loss became {loss.item()} at step {len(losses) + 1} (epoch {epoch}): training "
                                f"diverged; lower --lr (now {args.lr:g}) or check the schedule and --theta0. "
                                f"The last finished epoch is in {out}/model.pth")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            epoch_losses.append(loss.item())
            losses.append((len(losses) + 1, epoch, epoch_losses[-1]))
            bar.note(loss=f"{sum(epoch_losses[-50:]) / len(epoch_losses[-50:]):.4f}")
        train_s, t0 = time.time() - t0, time.time()
        image = f"image_ep{epoch:03d}.png"
        row = sample_and_score(sampler, config, setup, os.path.join(out, image), device, score)
        metrics.append({"epoch": epoch, "loss": round(sum(epoch_losses) / len(epoch_losses), 6),
                        "train_seconds": round(train_s, 1), "sample_seconds": round(time.time() - t0, 1), **row})
        save_epoch(out, model, optimizer, ema, epoch, config, losses, metrics)
        print(", ".join(f"{k} {v}" for k, v in metrics[-1].items()) + f" -> {out}/{image}, model.pth", flush=True)
    for w in args.guidance_sweep or []:
        sampler.guidance_scale = w
        sample_and_score(sampler, config, setup, os.path.join(out, f"guidance_w{w:g}.png"), device)
        print(f"wrote {out}/guidance_w{w:g}.png", flush=True)
    print(f"done: samples {out}/image_ep*.png, scores {out}/metrics.csv, curves {out}/loss_curve.png. "
          f"Sample more with: python sample.py {out}/model.pth", flush=True)


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    try:
        train(args)
    except (DataError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted: the last finished epoch is in model.pth; continue with --resume\n")


if __name__ == "__main__":
    main(sys.argv[1:])
