"""Train a diffusion model epoch by epoch: python main.py DDPM|DDGM|COND|VPRED|FLOW [options].

Writes into --out (default contents_<MODEL>/): image_ep{E:03d}.png per epoch, loss.csv,
loss_curve.png, metrics.csv (loss, seconds, fid), model.pth (atomic; --resume continues from
it), forward_diffusion.png, schedules.png and config.json. See README.md and `--help`.
--help and the arguments' bounds are answered before torch is imported; the process's own facts (models.py)
are checked next, and nothing is loaded before every check has passed.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import argparse
import math
import os
import sys
import time

from plumbing.catalog import MEDMNIST_2D, MEDMNIST_3D, PAPER, PRECISIONS, RECIPE, known
from plumbing.errors import HelpFormatter, Parser, run_script, world, world_problem
from plumbing.settings import option, problems


def recipe_help(text: str, key: str) -> str:
    def show(v):
        return " ".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else v
    paper = f"; paper: {show(PAPER[key])}" if key in PAPER else ""
    return f"{text} (default: {show(RECIPE[key])}{paper})"


def build_parser() -> Parser:
    p = Parser(prog="main.py", description="Train DDPM (Ho et al. 2020), DDGM (Nachmani et al. 2021), a conditional "
               "DDPM (COND), DDPM predicting v (VPRED, Salimans & Ho 2022) or flow matching (FLOW, Liu et al. 2022; "
               "Lipman et al. 2023) and write samples, losses and checkpoints.",
               formatter_class=HelpFormatter)
    p.add_argument("model", type=str.upper, choices=known("process"), metavar="MODEL",
                   help=f"the diffusion process, one of models.PROCESSES: {', '.join(known('process'))}")
    add_data_options(p.add_argument_group("data"))
    add_training_options(p.add_argument_group("training"))
    add_process_options(p.add_argument_group("process and network"))
    add_samples_options(p.add_argument_group("samples"))
    add_run_options(p.add_argument_group("run"))
    add_ddgm_options(p.add_argument_group("DDGM"))
    add_cond_options(p.add_argument_group("COND"))
    return p


def add_data_options(g) -> None:
    """data: what to train on."""
    g.add_argument("--dataset", default="mnist", metavar="NAME",
                   help=f"{', '.join(n for n in known('dataset') if n not in MEDMNIST_2D + MEDMNIST_3D)} or a MedMNIST "
                   "2D or 3D name (pathmnist, organmnist3d, ...)")
    g.add_argument("--data-dir", default="./data", help="where datasets are read from / downloaded to (folder, "
                   "nifti: its images/ and masks/)")
    g.add_argument("--data-path", help="the CSV file for --dataset csv")
    g.add_argument("--image-size", type=int,
                   help="folder/phantom: resize to this (default: 64); nifti/phantom3d: the cube's side "
                   "(32); csv: side length (28)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="folder/csv: 1 grayscale or 3 RGB (default: from the "
                   "files; csv 1)")
    g.add_argument("--limit", type=int, help="train on the first N images only")
    g.add_argument("--augment", action="store_true",
                   help="random flips, shifts and small rotations of each batch, the same for image and mask "
                   "(for small datasets; not for digits)")


def add_training_options(g) -> None:
    """training: Algorithm 1's recipe."""
    g.add_argument("--epochs", type=int, default=20, help="train until this many epochs are done")
    g.add_argument("--paper-settings", action="store_true",
                   help="Ho et al.'s settings for every option below marked 'paper:' that is not given")
    g.add_argument("--batch-size", type=int, help=recipe_help("images per training step (volumes: 8)", "batch_size"))
    g.add_argument("--lr", type=float, help=recipe_help("Adam learning rate", "lr"))
    g.add_argument("--warmup", type=int, help=recipe_help("steps of linear learning-rate warm-up from 0 to --lr",
                                                          "warmup"))
    g.add_argument("--ema-decay", type=float,
                   help=recipe_help("EMA of the weights used for sampling, with warm-up (0 disables)", "ema_decay"))
    g.add_argument("--min-snr", type=float, metavar="GAMMA",
                   help=recipe_help("weight the loss by min(SNR, GAMMA) / SNR (Hang et al. 2023); 0: plain L_simple "
                                    "(DDGM: always 0)", "min_snr"))
    g.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the batches and the sample noise")
    g.add_argument("--resume", action="store_true", help="continue from <out>/model.pth")


def add_process_options(g) -> None:
    """process and network: the forward process and eps_theta."""
    g.add_argument("--n-T", type=int, default=1000, help="number of diffusion steps T")
    g.add_argument("--betas", type=float, nargs=2, default=(1e-4, 0.02), metavar=("BETA_1", "BETA_T"),
                   help="ends of the linear beta schedule (Ho et al. Sec. 4)")
    g.add_argument("--schedule", metavar="NAME",
                   help=f"beta schedule, one of ddpm.SCHEDULES: {', '.join(known('schedule'))} (default: cosine for "
                        "DDPM and COND on images up to 32 px, else linear, and linear with --betas; paper: "
                        "linear)")
    g.add_argument("--net", metavar="NAME", help=recipe_help(f"noise network, one of unet.NETWORKS: "
                                                             f"{', '.join(known('net'))}", "net"))
    g.add_argument("--unet-widths", type=int, nargs="+", metavar="C",
                   help="U-Net channels per resolution, full size first; n widths give n - 1 down/up levels "
                   "(default: 16 32 32 up to 32 px, 16 32 64 64 up to 64 px, 16 32 64 128 128 above; volumes: "
                   "8 16 32 32)")
    g.add_argument("--unet-version", type=int, choices=(1, 2),
                   help="the U-Net's design (unet.VERSIONS): 2 zero-initialised, AdaGN, SiLU; 1 the first design "
                   "(default: 2 up to 64 px, 1 above and for volumes, as measured; --resume: the run's own)")
    g.add_argument("--attention-res", type=int, nargs="+", metavar="SIDE", default=[],
                   help="also self-attention at these feature-map sides in pixels (the deepest level always has it)")


def add_samples_options(g) -> None:
    """samples: the per-epoch samples and their scores."""
    g.add_argument("--sampler", metavar="NAME",
                   help=recipe_help(f"per-epoch samples, one of ddpm.SAMPLERS: {', '.join(known('sampler'))} (ddim: "
                                    "--sample-steps; ddpm: Algorithm 2, T steps; DDGM always ddpm)", "sampler"))
    g.add_argument("--sample-steps", type=int,
                   help="DDIM or Euler steps for the per-epoch samples (default: 50, at most T)")
    g.add_argument("--sample-eta", type=float, default=1.0,
                   help="DDIM eta (Song et al. eq. 16): 0 deterministic, 1 the DDPM posterior variance")
    g.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the predicted x0 to [-1, 1] while sampling, as the authors' code does; "
                   "--no-clip-x0 samples exactly as Algorithm 2 / eq. (12)")
    g.add_argument("--eval-samples", type=int,
                   help="samples scored by metrics.py's fid each epoch (0: none; default: 256, 64 with --sampler ddpm)")
    g.add_argument("--num-samples", type=int, help="per-epoch grid size (default: 64, volumes 8; COND class: 8 per "
                   "class)")
    g.add_argument("--sample-every", type=int, default=1, metavar="E",
                   help="draw the grid and scores every E epochs (and after the last); checkpoints every epoch")


def add_run_options(g) -> None:
    """run: where it writes and how it uses the machine."""
    g.add_argument("--out", help="output folder (default: contents_<MODEL>)")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training and per-epoch sampling: bf16 autocast, fp32, or auto: bf16 where this machine "
                   "computes it natively and a short check shows it faster, else fp32 (plumbing/speed.py)")
    g.add_argument("--threads", default="auto", metavar="N|auto|follow",
                   help="CPU threads, one count for the whole run, so that the same seed gives the same weights; "
                   "auto: all cores this process may use (or OMP_NUM_THREADS; --resume: the count the run began "
                   "with); follow: fewer while other processes keep the cores busy (faster on a shared machine, "
                   "but the weights then depend on the load)")


def add_ddgm_options(g) -> None:
    g.add_argument("--theta0", type=float, default=0.001, help="Gamma scale theta_0")
    g.add_argument("--loss", choices=("l1", "l2"), default="l2", help="DDGM loss norm")


def add_cond_options(g) -> None:
    g.add_argument("--cond", choices=("class", "mask"), help="what the network is given (default for COND: class if "
                   "the data has labels, else mask; VPRED and FLOW take --cond mask, unconditional by default)")
    g.add_argument("--p-uncond", type=float, default=0.1, help="label-drop probability for guidance")
    g.add_argument("--guidance", type=float, default=2.0, help="guidance scale w (0: no guidance)")
    g.add_argument("--guidance-sweep", type=float, nargs="+", metavar="W",
                   help="after training, write guidance_w<W>.png for each w")


def check_args(args, p: Parser) -> None:
    """Impossible or memory-eating settings end here, with one line naming the fix: first the bounds of every
    setting (no torch), then what the process supports (models.PROCESSES), then the output folder."""
    args.defaulted = [k for k in RECIPE if getattr(args, k) is None]  # volumes take their own batch (plumbing/run.py)
    schedule_given = args.schedule is not None  # before --paper-settings names one
    for key, value in ({**RECIPE, **PAPER} if args.paper_settings else RECIPE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sample_steps is None:
        args.sample_steps = min(50, args.n_T)
    given = {k: v for k, v in vars(args).items() if v is not None}
    for key, message in problems(given):  # the same bounds as a checkpoint's config (plumbing/settings.py)
        p.error(f"{option(key)} {message}")
    from models import PROCESSES, default_sampler, process_problems  # the process's facts (imports torch)
    process = PROCESSES[args.model]
    if "sampler" in args.defaulted:  # e.g. DDGM: Algorithm 2, for no DDIM is derived for Gamma noise
        args.sampler = default_sampler(args.model, args.sampler)
    if "min_snr" in args.defaulted and "min_snr" not in process.options:
        args.min_snr = 0.0
    betas_given = tuple(args.betas) != tuple(p.get_default("betas"))
    for key, given in (("schedule", schedule_given), ("betas", betas_given)):
        if not process.schedule and given:
            p.error(f"{option(key)} does not apply to {args.model}: it has no beta schedule (--n-T sets its time grid)")
    if args.schedule is None and betas_given:  # the ends of a schedule: the linear one, the only one that uses them
        args.schedule = "linear"
    if args.eval_samples is None:
        args.eval_samples = 64 if args.sampler == "ddpm" else 256  # Algorithm 2 takes all T steps
    for key, message in process_problems(vars(args)):
        p.error(f"{option(key)} {message}")
    if args.guidance_sweep and "class" not in process.conditions:
        p.error(f"--guidance-sweep applies to class-conditional processes only, not {args.model}")
    for w in args.guidance_sweep or []:
        if not math.isfinite(w) or not 0 <= w <= 100:
            p.error(f"--guidance-sweep must be a finite number in 0..100, got {w}")
    if args.threads not in ("auto", "follow") and not (args.threads.isdigit() and 1 <= int(args.threads) <= 1024):
        p.error(f"--threads must be auto, follow or a whole number in 1..1024, got {args.threads!r}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite contradict each other: pick one")
    check_out(args, p)


def check_out(args, p: Parser) -> None:
    """--out must be a folder this user can write, or a path where one can be made."""
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
    """Algorithm 1, epoch by epoch, then once per epoch the samples, their scores and the checkpoint.
    run (plumbing/run.py) holds the run folder, torchrun's processes, precision and threads."""
    import torch

    from figures import save_forward_diffusion, save_schedules
    from metrics import EpochSamples, judge_for
    from models import EMA, build_model
    from plumbing.files import save_atomic
    from plumbing.run import Run

    with Run(args) as run:
        train_set, held_out = run.load_data()
        config = run.configure(train_set)
        torch.manual_seed(args.seed)
        model = build_model(config).to(run.device)
        optimizer = torch.optim.Adam(model.eps_model.parameters(), lr=args.lr)
        ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
        if not run.begin(model, optimizer, ema):
            return
        sampler = ema.model if ema is not None else model  # every sample is drawn with the EMA weights
        if run.lead:  # the figures of the run's start, and the per-epoch draw with its judge (metrics.py)
            save_forward_diffusion(model, run.images[:8], run.path("forward_diffusion.png"),
                                   torch.Generator(run.device).manual_seed(args.seed))
            if model.schedule:  # the flow has none
                save_schedules(args.n_T, config["schedule"], args.betas, run.path("schedules.png"))
            epoch_samples = EpochSamples(config, held_out, judge_for(args, config, train_set), run.device)
        for epoch in run.epochs():
            model.train()
            for x0, cond in run.batches(epoch):                          # Alg. 1 line 2: x0 ~ q(x0)
                with run.autocast():
                    loss = model.loss(x0, **cond)                        # lines 3-5 (DDPM.loss)
                for group in optimizer.param_groups:
                    group["lr"] = warmup_lr(args.lr, args.warmup, run.step)
                optimizer.zero_grad(set_to_none=True)
                run.backward(loss)                                       # loss.backward()
                optimizer.step()                                         # line 5: the gradient step
                if ema is not None:
                    ema.update(model)
                run.log(loss)
            t0, write_grid, scores = time.time(), None, {}
            if run.sample_due(epoch):
                write_grid, scores = epoch_samples.draw(sampler, title=f"epoch {epoch}")
            run.save_epoch(epoch, write_grid, scores, sample_seconds=time.time() - t0)
        for w in (args.guidance_sweep or []) if run.lead else []:
            sampler.guidance_scale = w
            write_grid, _ = epoch_samples.draw(sampler, score=False, title=f"epoch {args.epochs}")
            save_atomic(write_grid, run.path(f"guidance_w{w:g}.png"))
            print(f"wrote {run.out}/guidance_w{w:g}.png", flush=True)
    print(f"done: samples {run.out}/image_ep*.png, scores {run.out}/metrics.csv, curves {run.out}/loss_curve.png. "
          f"Sample more with: python sample.py {run.out}/model.pth", flush=True)


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of training step `step` (1, 2, ...): linear warm-up from 0 over `warmup` steps
    (Goyal et al. 2017), then constant."""
    return lr * min(1.0, step / warmup) if warmup else lr


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if world_problem():  # before anything is checked or made
        parser.exit(2, f"{parser.prog}: error: {world_problem()}\n")
    check_args(args, parser)
    if world()[0] > 0:  # torchrun: rank 0 alone reports progress
        sys.stdout = open(os.devnull, "w")
    run_script(parser, train, args)


if __name__ == "__main__":
    main(sys.argv[1:])
