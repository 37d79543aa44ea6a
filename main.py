"""Train a diffusion model epoch by epoch: python main.py DDPM|DDGM|COND [options].

Writes into --out (default contents_<MODEL>/): image_ep{E:03d}.png per epoch, loss.csv,
loss_curve.png, metrics.csv (loss, seconds, fid), model.pth (atomic; --resume continues from
it), forward_diffusion.png, schedules.png and config.json. See README.md and `--help`.
The arguments are checked before torch is imported, so --help and mistakes answer at once.
"""
import argparse
import math
import os
import sys
import time

from catalog import DATASETS, MODELS, PAPER, RECIPE

EXPLODED = 1e3  # the eps-prediction loss starts near 1 (or 2 for an untrained net); far above it, training diverged


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" for every option that has one and does not already say it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line and exit code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def recipe_help(text: str, key: str) -> str:
    def show(v):
        return " ".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else v
    paper = f"; paper: {show(PAPER[key])}" if key in PAPER else ""
    return f"{text} (default: {show(RECIPE[key])}{paper})"


def build_parser() -> Parser:
    p = Parser(prog="main.py", description="Train DDPM (Ho et al. 2020), DDGM (Nachmani et al. 2021) "
               "or a conditional DDPM (COND) and write samples, losses and checkpoints.",
               formatter_class=HelpFormatter)
    p.add_argument("model", type=str.upper, choices=MODELS, metavar="MODEL", help="DDPM, DDGM or COND")
    p.add_argument("--dataset", default="mnist", choices=DATASETS, metavar="NAME",
                   help="mnist, shapes, phantom, folder, csv or a MedMNIST 2D name (pathmnist, ...)")
    p.add_argument("--data-dir", default="./data", help="where datasets are read from / downloaded to")
    p.add_argument("--data-path", help="the CSV file for --dataset csv")
    p.add_argument("--image-size", type=int,
                   help="folder/phantom: resize to this (default: 64); csv: side length (28)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder/csv: 1 grayscale or 3 RGB (default: from the "
                   "files; csv 1)")
    p.add_argument("--epochs", type=int, default=20, help="train until this many epochs are done")
    p.add_argument("--paper-settings", action="store_true",
                   help="Ho et al.'s settings for every option below marked 'paper:' that is not given")
    p.add_argument("--batch-size", type=int, help=recipe_help("images per training step", "batch_size"))
    p.add_argument("--lr", type=float, help=recipe_help("Adam learning rate", "lr"))
    p.add_argument("--warmup", type=int, help=recipe_help("steps of linear learning-rate warm-up from 0 to --lr",
                                                          "warmup"))
    p.add_argument("--ema-decay", type=float,
                   help=recipe_help("EMA of the weights used for sampling, with warm-up (0 disables)", "ema_decay"))
    p.add_argument("--min-snr", type=float, metavar="GAMMA",
                   help=recipe_help("weight the loss by min(SNR, GAMMA) / SNR (Hang et al. 2023); 0: plain L_simple "
                                    "(DDGM: always 0)", "min_snr"))
    p.add_argument("--n-T", type=int, default=1000, help="number of diffusion steps T")
    p.add_argument("--betas", type=float, nargs=2, default=(1e-4, 0.02), metavar=("BETA_1", "BETA_T"),
                   help="ends of the linear beta schedule (Ho et al. Sec. 4)")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear",
                   help="linear (Ho et al.) or cosine (Nichol & Dhariwal eq. 17)")
    p.add_argument("--net", choices=("cnn", "unet"),
                   help=recipe_help("unet (compact U-Net) or cnn (the coursework CNN: learns slowly)", "net"))
    p.add_argument("--unet-widths", type=int, nargs=3, metavar=("C1", "C2", "C3"),
                   help=recipe_help("U-Net channels at full, half and quarter resolution", "unet_widths"))
    p.add_argument("--sampler", choices=("ddim", "ddpm"),
                   help=recipe_help("per-epoch samples: ddim (Song et al., --sample-steps) or ddpm (Algorithm 2, "
                                    "T steps); DDGM always ddpm", "sampler"))
    p.add_argument("--sample-steps", type=int, help="DDIM steps for the per-epoch samples (default: 50, at most T)")
    p.add_argument("--sample-eta", type=float, default=1.0,
                   help="DDIM eta (Song et al. eq. 16): 0 deterministic, 1 the DDPM posterior variance")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the predicted x0 to [-1, 1] while sampling, as the authors' code does; "
                   "--no-clip-x0 samples exactly as Algorithm 2 / eq. (12)")
    p.add_argument("--eval-samples", type=int,
                   help="samples scored by metrics.py's fid each epoch (0: none; default: 256, 64 with --sampler ddpm)")
    p.add_argument("--out", help="output folder (default: contents_<MODEL>)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the batches and the sample noise")
    p.add_argument("--num-samples", type=int, default=64, help="per-epoch grid size (COND class: 8 per class)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--resume", action="store_true", help="continue from <out>/model.pth")
    g = p.add_argument_group("DDGM")
    g.add_argument("--theta0", type=float, default=0.001, help="Gamma scale theta_0")
    g.add_argument("--loss", choices=("l1", "l2"), default="l2", help="DDGM loss norm")
    g = p.add_argument_group("COND")
    g.add_argument("--cond", choices=("class", "mask"), help="(default: class if the data has labels, else mask)")
    g.add_argument("--p-uncond", type=float, default=0.1, help="label-drop probability for guidance")
    g.add_argument("--guidance", type=float, default=2.0, help="guidance scale w (0: no guidance)")
    g.add_argument("--guidance-sweep", type=float, nargs="+", metavar="W",
                   help="after training, write guidance_w<W>.png for each w")
    return p


def check_args(args, p: Parser) -> None:
    """Impossible or memory-eating settings end here, with one line naming the fix, before torch loads."""
    for key, value in ({**RECIPE, **PAPER} if args.paper_settings else RECIPE).items():
        if getattr(args, key) is None:  # DDGM: Algorithm 2 (no DDIM for Gamma noise), its own loss
            ddgm = {"sampler": "ddpm", "min_snr": 0.0}
            setattr(args, key, ddgm[key] if args.model == "DDGM" and key in ddgm else value)
    if args.sample_steps is None:
        args.sample_steps = min(50, args.n_T)
    if args.eval_samples is None:
        args.eval_samples = 256 if args.sampler == "ddim" else 64
    floats = [("--lr", args.lr), ("--ema-decay", args.ema_decay), ("--min-snr", args.min_snr),
              ("--sample-eta", args.sample_eta), ("--theta0", args.theta0),
              ("--p-uncond", args.p_uncond), ("--guidance", args.guidance), *(("--betas", b) for b in args.betas),
              *(("--guidance-sweep", w) for w in args.guidance_sweep or [])]
    for name, value in floats:
        if not math.isfinite(value):
            p.error(f"{name} must be a finite number, got {value}")
    beta_1, beta_T = args.betas
    checks = [(1 <= args.epochs <= 100_000, "--epochs must lie in 1..100000"),
              (1 <= args.batch_size <= 4096, "--batch-size must lie in 1..4096"),
              (0 < args.lr <= 1, "--lr must lie in (0, 1]: Adam diverges far below 1 already (try 1e-3)"),
              (0 <= args.warmup <= 1_000_000, "--warmup must lie in 0..1000000 steps"),
              (1 <= min(args.unet_widths) and max(args.unet_widths) <= 1024, "--unet-widths must lie in 1..1024"),
              (0 <= args.ema_decay < 1, "--ema-decay must lie in [0, 1)"),
              (0 <= args.min_snr <= 1e6, "--min-snr must lie in 0..1e6 (0: off; Hang et al. use 5)"),
              (args.min_snr == 0 or args.model != "DDGM", "--min-snr applies to DDPM and COND, not DDGM"),
              (2 <= args.n_T <= 10_000, "--n-T must lie in 2..10000"),
              (0 < beta_1 <= beta_T < 1, "--betas needs 0 < BETA_1 <= BETA_T < 1"),
              (1 <= args.sample_steps <= args.n_T, "--sample-steps must lie in 1..T (--n-T)"),
              (0 <= args.sample_eta <= 1, "--sample-eta must lie in [0, 1]"),
              (1 <= args.num_samples <= 10_000, "--num-samples must lie in 1..10000"),
              (args.eval_samples == 0 or 2 <= args.eval_samples <= 10_000,
               "--eval-samples must be 0 (off) or 2..10000"),
              (args.limit is None or args.limit >= 1, "--limit must be at least 1"),
              (args.image_size is None or 4 <= args.image_size <= 512, "--image-size must lie in 4..512"),
              (args.theta0 > 0, "--theta0 must be positive"),
              (0 <= args.p_uncond <= 1, "--p-uncond must lie in [0, 1]"),
              (0 <= args.guidance <= 100 and all(0 <= w <= 100 for w in args.guidance_sweep or []),
               "guidance scales must lie in 0..100"),
              (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other: pick one")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    if args.model != "COND" and (args.cond or args.guidance_sweep):
        p.error("--cond and --guidance-sweep apply to COND only")
    if args.model == "DDGM" and args.sampler == "ddim":
        p.error("DDIM is derived for Gaussian noise, not DDGM's Gamma noise: use --sampler ddpm")
    out = args.out or f"contents_{args.model}"
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"--out {out} is a file, not a folder: choose another --out")
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    writable = os.path.isdir(parent) and os.access(parent, os.W_OK)
    if not writable or (os.path.isdir(out) and not os.access(out, os.W_OK)):
        p.error(f"--out {out} cannot be written here (a file in the path, or no permission): choose another --out")


def train(args) -> None:
    """The whole run: per epoch, batches (Alg. 1), a sample figure with its scores, logs and a checkpoint."""
    import torch

    from data import DataError
    from figures import save_forward_diffusion, save_schedules, write_json
    from metrics import QualityScore
    from progress import Progress
    from training import (
        check_process,
        claim_out_folder,
        prepare,
        sample_and_score,
        sampling_setup,
        save_epoch,
        warmup_lr,
    )
    from unet import count_parameters

    out = args.out or f"contents_{args.model}"
    check_process(args)
    claim_out_folder(out, args)
    device, train_set, held_out, config, model, optimizer, ema, state = prepare(args, out)
    claim_out_folder(out, args, clear=True)
    losses, metrics = state["losses"], state["metrics"]
    if state["epoch"] >= args.epochs and not args.guidance_sweep:
        print(f"{out}/model.pth has finished {state['epoch']} epochs already, so --epochs {args.epochs} leaves "
              f"nothing to do: pass a larger --epochs to continue")
        return
    os.makedirs(out, exist_ok=True)
    steps = f"DDIM {args.sample_steps} steps, eta {args.sample_eta:g}" if args.sampler == "ddim" else \
        f"Algorithm 2, {args.n_T} steps"
    steps += ", clipped x0" if args.clip_x0 else ""
    print(f"{args.model} with {type(model.eps_model).__name__} ({count_parameters(model.eps_model):,} parameters) "
          f"on {args.dataset} ({len(train_set.images)} images {tuple(train_set.images.shape[1:])}), "
          f"T={model.T}, device {device}, samples by {steps}, writing {out}/", flush=True)
    score = None
    if args.eval_samples and train_set.labels is not None and args.dataset not in ("folder", "csv"):
        score = QualityScore(args.dataset, args.data_dir, image_size=args.image_size)
    elif args.eval_samples:
        print(f"no fid for {args.dataset}: metrics.py scores labelled datasets with a test split (mnist, shapes, "
              "MedMNIST)")
        config["eval_samples"] = 0  # draw the grid only
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
            if not torch.isfinite(loss) or loss.item() > EXPLODED:
                raise DataError(f"the loss became {loss.item():.3g} at step {len(losses) + 1} (epoch {epoch}): "
                                f"training diverged; lower --lr (now {args.lr:g}) or check the schedule and --theta0. "
                                f"The last finished epoch is in {out}/model.pth")
            for group in optimizer.param_groups:
                group["lr"] = warmup_lr(args.lr, args.warmup, len(losses) + 1)
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
    from data import DataError  # torch loads here, once the arguments are known to be good
    try:
        train(args)
    except (DataError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:  # disk full, permissions changed during the run, ...
        parser.exit(2, f"{parser.prog}: error: could not read or write {e.filename or 'a file'} ({e.strerror or e}): "
                    "free some space or choose another --out\n")
    except MemoryError:
        parser.exit(2, f"{parser.prog}: error: out of memory: lower --batch-size, --image-size or --num-samples\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted: the last finished epoch is in model.pth; continue with --resume\n")


if __name__ == "__main__":
    main(sys.argv[1:])
