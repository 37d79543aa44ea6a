"""Train a diffusion model epoch by epoch: python main.py DDPM|DDGM|COND [options].

Writes into --out (default contents_<MODEL>/): image_ep{E:03d}.png per epoch, loss.csv,
loss_curve.png, metrics.csv, model.pth (atomic; --resume continues from it),
forward_diffusion.png and config.json. See README.md and `python main.py --help`.
"""
import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

from cond import ConditionalDDPM
from data import DATASETS, DataError, lesion_dice, load_dataset
from ddgm import DDGM
from ddpm import DDPM, cosine_beta_schedule, linear_beta_schedule
from figures import (
    class_grid_labels,
    mask_triplets,
    save_atomic,
    save_forward_diffusion,
    save_grid,
    save_loss_curve,
    write_json,
    write_loss_csv,
    write_metrics_csv,
)
from unet import CNN, UNet, count_parameters

MODELS = ("DDPM", "DDGM", "COND")
# Settings that shape the network or the process: a checkpoint resumes only with the same ones.
ARCHITECTURE = ("model", "net", "n_T", "betas", "schedule", "theta0", "loss", "cond", "dataset",
                "in_channels", "image_size", "num_classes", "cond_channels")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line and exit code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    p = Parser(prog="main.py", description="Train DDPM (Ho et al. 2020), DDGM (Nachmani et al. 2021) "
               "or a conditional DDPM (COND) and write samples, losses and checkpoints.")
    p.add_argument("model", type=str.upper, choices=MODELS, metavar="MODEL", help="DDPM, DDGM or COND")
    p.add_argument("--dataset", default="mnist", choices=DATASETS, metavar="NAME",
                   help="mnist (default), shapes, phantom, folder, csv or a MedMNIST 2D name (pathmnist, ...)")
    p.add_argument("--data-dir", default="./data", help="where datasets are read from / downloaded to")
    p.add_argument("--data-path", help="the CSV file for --dataset csv")
    p.add_argument("--image-size", type=int, help="folder/phantom: resize to this (64); csv: side length (28)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder/csv: 1 grayscale or 3 RGB")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-T", type=int, default=1000, help="number of diffusion steps T")
    p.add_argument("--betas", type=float, nargs=2, default=(1e-4, 0.02), metavar=("BETA_1", "BETA_T"))
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    p.add_argument("--net", choices=("cnn", "unet"), default="cnn",
                   help="cnn (default: the coursework CNN, fast epochs, learns slowly) or unet (digits sooner)")
    p.add_argument("--clip-x0", action="store_true",
                   help="clip the predicted x0 to [-1, 1] while sampling, as the authors' code does (default: Alg. 2)")
    p.add_argument("--out", help="output folder (default contents_<MODEL>)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=64, help="per-epoch grid size (COND class: 8 per class)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--resume", action="store_true", help="continue from <out>/model.pth")
    g = p.add_argument_group("DDGM")
    g.add_argument("--theta0", type=float, default=0.001, help="Gamma scale theta_0 (default 0.001)")
    g.add_argument("--loss", choices=("l1", "l2"), default="l2", help="DDGM loss norm (default l2)")
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
    checks = [(args.epochs >= 1, "--epochs must be at least 1"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (args.lr > 0, "--lr must be positive"),
              (args.n_T >= 2, "--n-T must be at least 2"),
              (0 < beta_1 <= beta_T < 1, "--betas needs 0 < BETA_1 <= BETA_T < 1"),
              (args.num_samples >= 1, "--num-samples must be at least 1"),
              (args.limit is None or args.limit >= 1, "--limit must be at least 1"),
              (args.image_size is None or args.image_size >= 4, "--image-size must be at least 4"),
              (args.theta0 > 0, "--theta0 must be positive"),
              (0 <= args.p_uncond <= 1, "--p-uncond must lie in [0, 1]"),
              (args.guidance >= 0 and min(args.guidance_sweep or [0]) >= 0, "guidance scales must be >= 0")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    if args.model != "COND" and (args.cond or args.guidance_sweep):
        p.error("--cond and --guidance-sweep apply to COND only")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda but no CUDA GPU is available: use --device cpu")
    return device


def make_config(args, train_set) -> dict:
    """Everything needed to rebuild the model: the arguments plus what the data decided."""
    config = {k: v for k, v in vars(args).items() if k not in ("resume",)}
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


def build_model(config: dict) -> DDPM:
    """Network and diffusion process from a config (make_config's, or a checkpoint's)."""
    kw = {"in_channels": config["in_channels"], "num_classes": config["num_classes"],
          "cond_channels": config["cond_channels"]}
    net = CNN(**kw) if config["net"] == "cnn" else UNet(**kw)
    T, (beta_1, beta_T) = config["n_T"], config["betas"]
    beta = linear_beta_schedule(T, beta_1, beta_T) if config["schedule"] == "linear" else cosine_beta_schedule(T)
    clip_x0 = config.get("clip_x0", False)
    if config["model"] == "DDGM":
        return DDGM(net, beta, theta_0=config["theta0"], loss_type=config["loss"], clip_x0=clip_x0)
    if config["model"] == "COND":
        return ConditionalDDPM(net, beta, config["num_classes"], config["p_uncond"], config["guidance"],
                               clip_x0=clip_x0)
    return DDPM(net, beta, clip_x0=clip_x0)


def load_checkpoint(path: str, config: dict) -> dict:
    """The checkpoint at path, after checking it was trained with the same architecture."""
    if not os.path.isfile(path):
        raise DataError(f"--resume: no checkpoint at {path}: run once without --resume first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}): delete it") from e
    for key in ARCHITECTURE:
        if ckpt["config"].get(key) != config.get(key):
            raise DataError(f"--resume: {path} was trained with {key}={ckpt['config'].get(key)!r}, "
                            f"not {config.get(key)!r}: pass the same options or another --out")
    return ckpt


def fixed_sampling_setup(config: dict, held_out) -> dict:
    """What the per-epoch figure samples: n, the condition, and phantom masks for the Dice score."""
    if config["cond"] == "class":
        y = class_grid_labels(config["num_classes"])
        return {"n": len(y), "cond": {"y": y}, "masks": None}
    n = config["num_samples"]
    masks = None
    if held_out is not None and held_out.masks is not None:
        masks = held_out.masks[torch.arange(n) % len(held_out.masks)]
    cond = {"mask": masks} if config["cond"] == "mask" else {}
    return {"n": n, "cond": cond, "masks": masks if config["dataset"] == "phantom" else None}


def sample_and_save(model, config, setup, path, device, guidance=None) -> dict:
    """One sample figure from fixed noise (same seed every call); returns its metrics."""
    if guidance is not None:
        model.guidance_scale = guidance
    g = torch.Generator(device).manual_seed(config["seed"] + 1)
    cond = {k: v.to(device) for k, v in setup["cond"].items()}
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    model.eval()
    x = model.sample(setup["n"], shape, generator=g, progress=True, **cond).cpu()
    if config["cond"] == "mask":
        save_grid(mask_triplets(x[:16], setup["cond"]["mask"][:16]), path, nrow=6)
    else:
        save_grid(x, path, nrow=8)
    metrics = {}
    if setup["masks"] is not None:  # phantom: the lesion is the only bright region
        metrics["dice"] = round(lesion_dice(x, setup["masks"]), 4)
        metrics["dice_shuffled_masks"] = round(lesion_dice(x, setup["masks"].roll(1, dims=0)), 4)
    return metrics


def prepare(args, out: str):
    """Device, data (training set and held-out set), config, model, optimiser, and the state to
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
    state = {"epoch": 0, "losses": [], "metrics": []}
    if args.resume:
        state = load_checkpoint(os.path.join(out, "model.pth"), config)
        model.eps_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return device, train_set, held_out, config, model, optimizer, state


def save_epoch(out: str, model, optimizer, epoch: int, config: dict, losses: list, metrics: list) -> None:
    """loss.csv, loss_curve.png, metrics.csv and the self-describing checkpoint model.pth, all atomic."""
    write_loss_csv(losses, os.path.join(out, "loss.csv"))
    l1 = config["model"] == "DDGM" and config["loss"] == "l1"
    save_loss_curve(losses, os.path.join(out, "loss_curve.png"), "L1 loss" if l1 else "MSE loss")
    write_metrics_csv(metrics, os.path.join(out, "metrics.csv"))
    state = {"model": model.eps_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "config": config, "losses": losses, "metrics": metrics}
    save_atomic(lambda p: torch.save(state, p), os.path.join(out, "model.pth"))


def train(args) -> None:
    """The whole run: per epoch, batches (Alg. 1), a sample figure (Alg. 2), logs and a checkpoint."""
    out = args.out or f"contents_{args.model}"
    device, train_set, held_out, config, model, optimizer, state = prepare(args, out)
    losses, metrics = state["losses"], state["metrics"]
    os.makedirs(out, exist_ok=True)
    print(f"{args.model} with {type(model.eps_model).__name__} ({count_parameters(model.eps_model):,} parameters) "
          f"on {args.dataset} ({len(train_set.images)} images {tuple(train_set.images.shape[1:])}), "
          f"T={model.T}, device {device}, writing {out}/", flush=True)
    write_json(config, os.path.join(out, "config.json"))
    x_all = train_set.images.to(device)
    y_all = train_set.labels.to(device) if config["cond"] == "class" else None
    m_all = train_set.masks.to(device) if config["cond"] == "mask" else None
    g = torch.Generator(device).manual_seed(args.seed)
    save_forward_diffusion(model, x_all[:8], os.path.join(out, "forward_diffusion.png"), g)
    setup = fixed_sampling_setup(config, held_out)
    N, B = len(x_all), args.batch_size
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        torch.manual_seed(args.seed + epoch)  # a resumed run draws what an uninterrupted one would
        model.train()
        t0, epoch_losses = time.time(), []
        perm = torch.randperm(N, device=device)
        bar = tqdm(range(0, N, B), desc=f"epoch {epoch}/{args.epochs}", unit="batch",
                   mininterval=0.1 if sys.stderr.isatty() else 30)  # terse in logs
        for i in bar:
            idx = perm[i:i + B]
            cond = {k: v[idx] for k, v in (("y", y_all), ("mask", m_all)) if v is not None}
            loss = model.loss(x_all[idx], **cond)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
            losses.append((len(losses) + 1, epoch, epoch_losses[-1]))
            bar.set_postfix(loss=f"{sum(epoch_losses[-50:]) / len(epoch_losses[-50:]):.4f}", refresh=False)
        train_s, t0 = time.time() - t0, time.time()
        row = sample_and_save(model, config, setup, os.path.join(out, f"image_ep{epoch:03d}.png"), device)
        metrics.append({"epoch": epoch, "loss": round(sum(epoch_losses) / len(epoch_losses), 6),
                        "train_seconds": round(train_s, 1), "sample_seconds": round(time.time() - t0, 1), **row})
        print(", ".join(f"{k} {v}" for k, v in metrics[-1].items()), flush=True)
        save_epoch(out, model, optimizer, epoch, config, losses, metrics)
    for w in args.guidance_sweep or []:
        sample_and_save(model, config, setup, os.path.join(out, f"guidance_w{w:g}.png"), device, guidance=w)
        print(f"wrote {out}/guidance_w{w:g}.png", flush=True)


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
