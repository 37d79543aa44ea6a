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

from catalog import MEDMNIST_2D, MEDMNIST_3D, MODELS, PAPER, PRECISIONS, RECIPE, known
from errors import DataError, HelpFormatter, Parser, run_script, world
from settings import option, problems


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
    p.add_argument("--dataset", default="mnist", metavar="NAME",
                   help=f"{', '.join(n for n in known('dataset') if n not in MEDMNIST_2D + MEDMNIST_3D)} or a MedMNIST "
                   "2D or 3D name (pathmnist, organmnist3d, ...)")
    p.add_argument("--data-dir", default="./data", help="where datasets are read from / downloaded to (folder, "
                   "nifti: its images/ and masks/)")
    p.add_argument("--data-path", help="the CSV file for --dataset csv")
    p.add_argument("--image-size", type=int,
                   help="folder/phantom: resize to this (default: 64); nifti/phantom3d: the cube's side "
                   "(32); csv: side length (28)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder/csv: 1 grayscale or 3 RGB (default: from the "
                   "files; csv 1)")
    p.add_argument("--epochs", type=int, default=20, help="train until this many epochs are done")
    p.add_argument("--paper-settings", action="store_true",
                   help="Ho et al.'s settings for every option below marked 'paper:' that is not given")
    p.add_argument("--batch-size", type=int, help=recipe_help("images per training step (volumes: 8)", "batch_size"))
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
    p.add_argument("--schedule", default="linear", metavar="NAME",
                   help=f"beta schedule, one of ddpm.SCHEDULES: {', '.join(known('schedule'))}")
    p.add_argument("--net", metavar="NAME", help=recipe_help(f"noise network, one of unet.NETWORKS: "
                                                             f"{', '.join(known('net'))}", "net"))
    p.add_argument("--unet-widths", type=int, nargs="+", metavar="C",
                   help="U-Net channels per resolution, full size first; n widths give n - 1 down/up levels "
                   "(default: 16 32 32 up to 32 px, 16 32 64 64 up to 64 px, 16 32 64 128 128 above; volumes: "
                   "8 16 32 32)")
    p.add_argument("--attention-res", type=int, nargs="+", metavar="SIDE", default=[],
                   help="also self-attention at these feature-map sides in pixels (the deepest level always has it)")
    p.add_argument("--augment", action="store_true",
                   help="random flips, shifts and small rotations of each batch, the same for image and mask "
                   "(for small datasets; not for digits)")
    p.add_argument("--sampler", metavar="NAME",
                   help=recipe_help(f"per-epoch samples, one of ddpm.SAMPLERS: {', '.join(known('sampler'))} (ddim: "
                                    "--sample-steps; ddpm: Algorithm 2, T steps; DDGM always ddpm)", "sampler"))
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
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training and per-epoch sampling: bf16 autocast, fp32, or auto: bf16 where this machine "
                   "computes it natively and a short check shows it faster, else fp32 (speed.py)")
    p.add_argument("--threads", default="auto", metavar="N|auto",
                   help="CPU threads; auto: all cores this process may use, fewer while other processes keep "
                   "them busy (a shared machine), or OMP_NUM_THREADS where it is set")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the batches and the sample noise")
    p.add_argument("--num-samples", type=int, help="per-epoch grid size (default: 64, volumes 8; COND class: 8 per "
                   "class)")
    p.add_argument("--sample-every", type=int, default=1, metavar="E",
                   help="draw the grid and scores every E epochs (and after the last); checkpoints every epoch")
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
    args.defaulted = [k for k in RECIPE if getattr(args, k) is None]  # volumes take their own batch (training.py)
    for key, value in ({**RECIPE, **PAPER} if args.paper_settings else RECIPE).items():
        if getattr(args, key) is None:  # DDGM: Algorithm 2 (no DDIM for Gamma noise), its own loss
            ddgm = {"sampler": "ddpm", "min_snr": 0.0}
            setattr(args, key, ddgm[key] if args.model == "DDGM" and key in ddgm else value)
    if args.sample_steps is None:
        args.sample_steps = min(50, args.n_T)
    if args.eval_samples is None:
        args.eval_samples = 256 if args.sampler == "ddim" else 64
    given = {k: v for k, v in vars(args).items() if v is not None}
    for key, message in problems(given):  # the same bounds as a checkpoint's config (settings.py)
        p.error(f"{option(key)} {message}")
    for w in args.guidance_sweep or []:
        if not math.isfinite(w) or not 0 <= w <= 100:
            p.error(f"--guidance-sweep must be a finite number in 0..100, got {w}")
    if args.threads != "auto" and not (args.threads.isdigit() and 1 <= int(args.threads) <= 1024):
        p.error(f"--threads must be auto or a whole number in 1..1024, got {args.threads!r}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite contradict each other: pick one")
    if args.model != "COND" and (args.cond or args.guidance_sweep):
        p.error("--cond and --guidance-sweep apply to COND only")
    out = args.out or f"contents_{args.model}"
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"--out {out} is a file, not a folder: choose another --out")
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    writable = os.path.isdir(parent) and os.access(parent, os.W_OK)
    if not writable or (os.path.isdir(out) and not os.access(out, os.W_OK)):
        p.error(f"--out {out} cannot be written here (a file in the path, or no permission): choose another --out")


def train(args, done: dict) -> None:
    """The whole run, in a run folder locked for it (runfolder.py) by rank 0, the only one that writes
    (torchrun: parallel.py); done["epoch"] follows the last saved epoch."""
    from parallel import start, stop
    from runfolder import RunFolder
    from training import check_process
    check_process(args)
    rank, size = world()
    if size > 1 and args.batch_size < size:
        raise DataError(f"--batch-size {args.batch_size} is smaller than the {size} processes that share "
                         "each batch: use a larger --batch-size or fewer processes")
    folder = RunFolder(args.out or f"contents_{args.model}", args.resume, args.overwrite)
    if rank == 0:
        folder.check()
        folder.lock()
    try:
        if size > 1:
            from models import pick_device
            args.device = str(start(pick_device(args.device)))
        train_in(folder, args, done, rank, size)
    finally:
        stop()
        if rank == 0:
            folder.release()


def train_in(folder, args, done: dict, rank: int = 0, size: int = 1) -> None:
    """Per epoch: batches (Alg. 1), a sample figure with its scores, then the epoch's checkpoint, logs
    and grid saved together (all or nothing). rank, size: this process among torchrun's (parallel.py);
    each trains on its rows of every batch, rank 0 (lead) alone samples, scores and writes."""
    import torch

    from figures import save_forward_diffusion, save_schedules
    from files import save_atomic, write_json
    from parallel import batch_losses, rows, unwrap, wrap
    from progress import Progress
    from speed import thread_policy
    from training import (
        CHECK_EVERY,
        diverged,
        judge,
        pick_precision,
        prepare,
        sample_and_score,
        sampling_setup,
        save_epoch,
        train_step,
    )
    from transforms import augment
    from unet import count_parameters

    out, lead = folder.out, rank == 0
    device, train_set, held_out, config, model, optimizer, ema, state = prepare(args, out)
    if lead:
        folder.clear()
    losses, metrics = state["losses"], state["metrics"]
    done["epoch"] = state["epoch"]
    if state["epoch"] >= args.epochs and not args.guidance_sweep:
        print(f"{out}/model.pth has finished {state['epoch']} epochs already, so --epochs {args.epochs} leaves "
              f"nothing to do: pass a larger --epochs to continue")
        return
    steps = {"ddim": f"DDIM {args.sample_steps} steps, eta {args.sample_eta:g}",
             "ddpm": f"Algorithm 2, {args.n_T} steps"}.get(args.sampler, f"sampler {args.sampler}")
    steps += ", clipped x0" if args.clip_x0 else ""
    print(f"{args.model} with {type(model.eps_model).__name__} ({count_parameters(model.eps_model):,} parameters) "
          f"on {args.dataset} ({len(train_set.images)} {'volumes' if config['dims'] == 3 else 'images'} "
          f"{tuple(train_set.images.shape[1:])}), "
          f"T={model.T}, device {device}, samples by {steps}, writing {out}/", flush=True)
    x_all = train_set.images.to(device)
    y_all = train_set.labels.to(device) if config["cond"] == "class" else None
    m_all = train_set.masks.to(device) if config["cond"] == "mask" else None
    N, B = len(x_all), args.batch_size
    threads, why = thread_policy(args.threads)  # speed.py: precision and threads for this machine
    pick_precision(args.precision, config, model, x_all[:B], y_all, m_all, lead, size,
                   before=state.get("config", {}).get("precision_used"))
    print(f"precision {config['precision_used']} ({config['precision_why']}); {why}"
          + (f"; {size} processes (torchrun) share each batch" if size > 1 else ""), flush=True)
    score = judge(args, config, train_set) if lead else None
    if lead:
        write_json(config, folder.path("config.json"))
        g = torch.Generator(device).manual_seed(args.seed)
        save_forward_diffusion(model, x_all[:8], folder.path("forward_diffusion.png"), g)
        save_schedules(args.n_T, args.schedule, args.betas, folder.path("schedules.png"))
    setup = sampling_setup(config, held_out)
    sampler = ema.model if ema is not None else model
    model.eps_model = wrap(model.eps_model, device, size)  # several processes: DDP averages the gradients
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        torch.manual_seed(args.seed + epoch)  # a resumed run draws what an uninterrupted one would
        model.train()
        t0, epoch_losses, pending = time.time(), [], []  # pending: losses not read back yet (no host sync)
        perm = torch.randperm(N, device=device)
        bar = Progress(range(0, N, B), -(-N // B), f"epoch {epoch}/{args.epochs}", "batches", show=lead)
        for i in bar:
            idx = perm[i:i + B]
            cond = {k: v[idx] for k, v in (("y", y_all), ("mask", m_all)) if v is not None}
            x0 = x_all[idx]
            if args.augment:
                x0, mask = augment(x0, cond.get("mask"))
                cond.update({"mask": mask} if mask is not None else {})
            pending.append(train_step(model, optimizer, ema, x0, len(losses) + len(pending) + 1, args.lr,
                                      args.warmup, precision=config["precision_used"],
                                      rows=rows(len(x0), rank, size), processes=size, **cond))  # Alg. 1
            if threads.update():
                bar.note(threads=torch.get_num_threads())
            if len(pending) < CHECK_EVERY and i + B < N:
                continue
            for loss in batch_losses(pending, size):  # the global batch's losses, one sync for all
                if diverged(loss):
                    raise DataError(f"the loss became {loss:.3g} at step {len(losses) + 1} (epoch {epoch}): "
                                    f"training diverged; lower --lr (now {args.lr:g}) or check the schedule and "
                                    f"--theta0. {finished(out, done['epoch'])}")
                epoch_losses.append(loss)
                losses.append((len(losses) + 1, epoch, loss))
            pending = []
            bar.note(loss=f"{sum(epoch_losses[-50:]) / len(epoch_losses[-50:]):.4f}")
        if not lead:
            continue
        train_s, t0 = time.time() - t0, time.time()
        write_grid, row = None, {}
        if epoch % args.sample_every == 0 or epoch == args.epochs:
            write_grid, row = sample_and_score(sampler, config, setup, device, score)
        metrics.append({"epoch": epoch, "loss": round(sum(epoch_losses) / len(epoch_losses), 6),
                        "train_seconds": round(train_s, 1), "sample_seconds": round(time.time() - t0, 1), **row})
        save_epoch(folder, model, optimizer, ema, epoch, config, losses, metrics, write_grid, done)
        done["epoch"] = epoch
        grid = f"{out}/image_ep{epoch:03d}.png, " if write_grid else f"{out}/"
        print(", ".join(f"{k} {v}" for k, v in metrics[-1].items()) + f" -> {grid}model.pth", flush=True)
    model.eps_model = unwrap(model.eps_model)
    for w in (args.guidance_sweep or []) if lead else []:
        sampler.guidance_scale = w
        write_grid, _ = sample_and_score(sampler, config, setup, device)
        save_atomic(write_grid, folder.path(f"guidance_w{w:g}.png"))
        print(f"wrote {out}/guidance_w{w:g}.png", flush=True)
    print(f"done: samples {out}/image_ep*.png, scores {out}/metrics.csv, curves {out}/loss_curve.png. "
          f"Sample more with: python sample.py {out}/model.pth", flush=True)


def finished(out: str, epoch: int) -> str:
    """Where the run stands, for messages that end it early."""
    if not epoch:
        return f"No epoch has finished yet, so {out}/ holds no checkpoint of this run"
    return f"The last finished epoch, {epoch}, is in {out}/model.pth; continue with --resume"


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    if world()[0] > 0:  # torchrun: rank 0 alone reports progress
        sys.stdout = open(os.devnull, "w")
    done = {"epoch": 0}  # the last epoch saved, for the message if the run is stopped
    out = args.out or f"contents_{args.model}"
    stopped = lambda: f"interrupted. {finished(out, done['epoch'])}"  # noqa: E731
    run_script(parser, lambda a: train(a, done), args, interrupted=stopped)


if __name__ == "__main__":
    main(sys.argv[1:])
