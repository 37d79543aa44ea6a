"""Train a diffusion model epoch by epoch: python main.py DDPM|DDGM|COND|VPRED|FLOW|EDM [options].

Writes into --out (default contents_<MODEL>/): image_ep{E:03d}.png per epoch, loss.csv, loss_curve.png,
metrics.csv (loss, seconds, fid), model.pth (--resume continues from it), forward_diffusion.png, schedules.png,
config.json and run.json (the run's own files). Read in this order: the recipe (its defaults, each measured),
then train(), Algorithm 1 epoch by epoch.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import argparse
import copy
import math
import os
import sys
import time

import torch

from data import DATASETS, augment, dataset_info, fingerprint, load_dataset
from ddpm import SCHEDULES
from figures import (
    class_grid_labels,
    sampler_text,
    save_forward_diffusion,
    save_loss_curve,
    save_sample_grid,
    save_schedules,
)
from metrics import judge_for, lesion_scores
from models import (
    PAPER,
    PROCESS_OPTIONS,
    PROCESSES,
    RECIPE,
    SAMPLERS,
    build_model,
    by_size,
    check_sampler,
    draw,
    listed,
    sample_shape,
)
from plumbing.errors import DataError, Parser, run_script
from plumbing.progress import Progress
from plumbing.run import Run
from plumbing.settings import option, problems
from unet import NETWORKS, count_parameters

# --- the recipe -------------------------------------------------------------------------------------

def recipe(args, saved: dict | None = None) -> dict:
    """The run's settings: what the command line gives, then (--resume) the run's own, then the defaults above.
    args is read, never changed. Returns the config, checked before any data are read."""
    process = PROCESSES[args.model]
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "overwrite", "threads",
                                                                               "precision", "paper_settings")}
    for key in PROCESS_OPTIONS:
        if key in given and key not in process.options:
            takers = [n for n, p in PROCESSES.items() if key in p.options]
            raise DataError(f"{option(key)} applies to {listed(takers)}, not {args.model}")
    if not process.has_beta_schedule and ("schedule" in given or "betas" in given):
        key = "schedule" if "schedule" in given else "betas"
        raise DataError(f"{option(key)} does not apply to {args.model}: it has no beta schedule (--n-T sets its grid)")
    config = {**(saved or {}), **given}
    if "betas" in given and "schedule" not in given:
        config["schedule"] = "linear"  # the ends of a schedule: the linear one, the only one that uses them
    defaults = {**RECIPE, **PAPER} if args.paper_settings else RECIPE
    for key, value in defaults.items():
        if key not in PROCESS_OPTIONS or key in process.options:
            config.setdefault(key, value)
    config = {k: v for k, v in config.items() if k not in PROCESS_OPTIONS or k in process.options}
    if config.get("sampler") not in process.samplers and "sampler" not in given:
        config["sampler"] = process.samplers[0]
    config.setdefault("eval_samples", 64 if config["sampler"] == "ddpm" else 256)  # Algorithm 2 takes T steps
    if "sample_steps" not in given:
        config["sample_steps"] = min(config["sample_steps"], config["n_T"])
    if not process.has_beta_schedule:
        config.pop("schedule", None), config.pop("betas", None)
    check(config, process, args)
    return config


def for_data(config: dict, data) -> dict:
    """What the data decide, where the command line or the resumed run did not: the channels and side, the
    condition, the network's size and design, the schedule, and a fingerprint of the data (data_id)."""
    N, C, *sides = data.images.shape  # count, channels, then H, W (volumes: D, H, W), all equal
    H, volumes = sides[-1], len(sides) == 3
    process = PROCESSES[config["model"]]
    cond = config.get("cond") or (None if not process.conditional else "class" if data.labels is not None
                                  else "mask")
    if cond == "class" and data.labels is None:
        raise DataError(f"--cond class needs labels, and {config['dataset']} has none: use --cond mask or "
                        "labelled data")
    if cond == "mask" and data.masks is None:
        raise DataError(f"--cond mask needs masks, and {config['dataset']} has none: use folder (with masks/) "
                        "or phantom")
    if volumes and config.get("augment"):
        raise DataError("--augment flips, shifts and rotates 2D images; it does not work on volumes yet: leave it out")
    config = {**config, "cond": cond, "in_channels": C, "image_size": H, "dims": len(sides),
              "num_classes": int(data.labels.max()) + 1 if cond == "class" else 0,
              "cond_channels": 1 if cond == "mask" else 0, "data_id": f"{config['dataset']}:{N}:{fingerprint(data)}"}
    for key, value in by_size(config["model"], H, len(sides), config["epochs"]).items():
        if key != "schedule" or process.has_beta_schedule:
            config.setdefault(key, value)
    return config


def check(config: dict, process, args) -> None:
    """Impossible or memory-eating settings end here, in one line naming the fix, before any data are read."""
    for key, message in problems(config):  # the same bounds as a checkpoint's config (plumbing/settings.py)
        raise DataError(f"{option(key)} {message}")
    dataset_info(config["dataset"])  # an unknown name: one line listing the known ones
    if config["sampler"] not in process.samplers:
        raise DataError(f"--sampler must be {listed(process.samplers)} for {args.model} (its samplers)")
    check_sampler(process, config["sampler"], **{"--sample-steps": args.sample_steps, "--sample-eta": args.sample_eta})
    if config.get("cond") is not None and config["cond"] not in process.conditions:
        takers = [n for n, p in PROCESSES.items() if config["cond"] in p.conditions]
        raise DataError(f"--cond {config['cond']} applies to {listed(takers)} only, not {args.model}")
    if config.get("guidance_sweep") and "class" not in process.conditions:
        raise DataError(f"--guidance-sweep applies to class-conditional processes only, not {args.model}")
    if any(not math.isfinite(w) or not 0 <= w <= 100 for w in config.get("guidance_sweep") or []):
        raise DataError(f"--guidance-sweep must be a finite number in 0..100, got {config['guidance_sweep']}")
    if args.threads != "auto" and not (args.threads.isdigit() and 1 <= int(args.threads) <= 1024):
        raise DataError(f"--threads must be auto or a whole number in 1..1024, got {args.threads!r}")
    if args.resume and args.overwrite:
        raise DataError("--resume and --overwrite contradict each other: pick one")
    try:  # the process alone, with no network: settings it cannot represent (DDGM's Gamma noise) end here
        process.from_config(torch.nn.Identity(), {**config, "schedule": config.get("schedule", "linear"),
                                                  "num_classes": 0})
    except ValueError as e:
        raise DataError(str(e)) from e


def build_parser() -> Parser:
    def default(text: str, key: str) -> str:
        paper = f"; paper: {PAPER[key]}" if key in PAPER else ""
        return f"{text} (default: {RECIPE[key] if key in RECIPE else 'see below'}{paper})"

    p = Parser(prog="main.py", description="Train DDPM (Ho et al. 2020), DDGM (Nachmani et al. 2021), a conditional "
               "DDPM (COND), DDPM predicting v (VPRED, Salimans & Ho 2022), flow matching (FLOW, Liu et al. 2022) or "
               "EDM (Karras et al. 2022) and write samples, losses and checkpoints. Every option left out takes the "
               "recipe's default, or with --resume the run's own.")
    p.add_argument("model", type=str.upper, choices=list(PROCESSES), metavar="MODEL",
                   help=f"the diffusion process, one of models.PROCESSES: {', '.join(PROCESSES)}")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", metavar="NAME", help=default(f"{', '.join(DATASETS)} or a MedMNIST 2D or 3D name "
                                                             "(pathmnist, organmnist3d, ...)", "dataset"))
    g.add_argument("--data-dir", help=default("where datasets are read from / downloaded to", "data_dir"))
    g.add_argument("--data-path", help="the CSV file for --dataset csv")
    g.add_argument("--image-size", type=int, help="folder, phantoms, nifti, csv: the side (default: the dataset's)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="folder, csv: 1 grayscale or 3 RGB (default: the "
                   "files')")
    g.add_argument("--limit", type=int, help="train on the first N images only")
    g.add_argument("--augment", action="store_true", default=None, help="random flips, shifts and small rotations "
                   "of each batch, the same for image and mask (for small datasets; not for digits)")
    g = p.add_argument_group("training: Algorithm 1's recipe")
    g.add_argument("--epochs", type=int, help=default("train until this many epochs are done", "epochs"))
    g.add_argument("--paper-settings", action="store_true", help="Ho et al.'s settings for every option marked "
                   "'paper:' that is not given")
    g.add_argument("--batch-size", type=int, help="images per training step (default: 32, volumes 8; paper: 128)")
    g.add_argument("--lr", type=float, help=default("Adam learning rate", "lr"))
    g.add_argument("--warmup", type=int, help=default("steps of linear learning-rate warm-up from 0", "warmup"))
    g.add_argument("--lr-decay", type=float, metavar="F", help=default("decay the learning rate linearly to 0 over the "
                   "last fraction F of the run's steps (--epochs); 0: constant", "lr_decay"))
    g.add_argument("--ema-decay", type=float, help=default("EMA of the weights that draw every sample", "ema_decay"))
    g.add_argument("--min-snr", type=float, metavar="GAMMA", help=default("weight the loss by min(SNR, GAMMA) / SNR "
                   "(Hang et al. 2023); 0: plain L_simple", "min_snr"))
    g.add_argument("--seed", type=int, help=default("seeds the initialisation, the batches and the noise", "seed"))
    g.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    g = p.add_argument_group("process and network")
    g.add_argument("--n-T", type=int, help=default("number of diffusion steps T", "n_T"))
    g.add_argument("--betas", type=float, nargs=2, metavar=("BETA_1", "BETA_T"),
                   help=default("ends of the linear beta schedule (Ho et al. Sec. 4)", "betas"))
    g.add_argument("--schedule", choices=list(SCHEDULES), help="beta schedule, one of ddpm.SCHEDULES (default: "
                   "cosine for DDPM and COND on images up to 32 px, else linear; paper: linear)")
    g.add_argument("--net", choices=list(NETWORKS), help=default("the network, one of unet.NETWORKS", "net"))
    g.add_argument("--unet-widths", type=int, nargs="+", metavar="C", help="U-Net channels per resolution; n widths "
                   "give n - 1 levels (default: 16 32 32 up to 32 px, there 24 48 48 from --epochs 12 on; 16 32 64 64 "
                   "up to 64; 16 32 64 128 128 above; volumes 8 16 32 32)")
    g.add_argument("--unet-version", type=int, choices=(1, 2), help="the U-Net's design (unet.VERSIONS): 2 "
                   "zero-initialised, AdaGN, SiLU; 1 the first (default: 2 up to 64 px, 1 above and for volumes)")
    g.add_argument("--attention-res", type=int, nargs="+", metavar="SIDE", help="also self-attention at these "
                   "feature-map sides in pixels (the deepest level always has it)")
    g = p.add_argument_group("samples drawn after each epoch")
    g.add_argument("--sampler", choices=list(SAMPLERS), help="one of models.SAMPLERS (default: the process's first: "
                   "ddim for DDPM, COND and VPRED, ddpm for DDGM, euler for FLOW, heun for EDM; paper: ddpm)")
    g.add_argument("--sample-steps", type=int, help=default("DDIM, Euler or Heun steps, at most T", "sample_steps"))
    g.add_argument("--sample-eta", type=float, help=default("DDIM eta (Song et al. eq. 16): 0 deterministic, 1 the "
                   "DDPM posterior variance", "sample_eta"))
    g.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, help=default(
        "clip the predicted x0 to [-1, 1] while sampling, as Ho et al.'s code does", "clip_x0"))
    g.add_argument("--eval-samples", type=int, help="samples scored by metrics.py's judge (0: none; default: 256, 64 "
                   "with --sampler ddpm)")
    g.add_argument("--num-samples", type=int, help="grid size (default: 64, volumes 8; classes: 8 per class)")
    g.add_argument("--sample-every", type=int, metavar="E", help=default("draw the grid and scores every E epochs "
                   "and after the last", "sample_every"))
    g = p.add_argument_group("run: where it writes and how it uses the machine")
    g.add_argument("--out", help="output folder (default: contents_<MODEL>)")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    g.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="bf16 autocast, fp32, or "
                   "auto: bf16 where the hardware computes it natively (a CPU with avx512_bf16 or amx_bf16, an "
                   "NVIDIA GPU from Ampere on), else fp32")
    g.add_argument("--threads", default="auto", metavar="N|auto", help="CPU threads, one count for the whole run so "
                   "that the same seed gives the same weights; auto: every core this process may use, or "
                   "OMP_NUM_THREADS")
    g = p.add_argument_group("DDGM, COND")
    g.add_argument("--theta0", type=float, help=default("DDGM: Gamma scale theta_0", "theta0"))
    g.add_argument("--loss", choices=("l1", "l2"), help=default("DDGM: the loss norm", "loss"))
    g.add_argument("--cond", choices=("class", "mask"), help="what the network is given (default for COND: class if "
                   "the data has labels, else mask; VPRED, FLOW and EDM take --cond mask)")
    g.add_argument("--p-uncond", type=float, help=default("COND: label-drop probability for guidance", "p_uncond"))
    g.add_argument("--guidance", type=float, help=default("COND: guidance scale w (0: none)", "guidance"))
    g.add_argument("--guidance-sweep", type=float, nargs="+", metavar="W", help="COND: after training, write "
                   "guidance_w<W>.png for each w")
    return p


# --- the loop ---------------------------------------------------------------------------------------

def train(config: dict, data, held_out, run: Run) -> None:
    """Algorithm 1 (Ho et al. 2020), epoch by epoch; after each epoch the samples, their scores and the checkpoint.
    run (plumbing/run.py) keeps the run folder, the checkpoint, torchrun's processes and the precision."""
    samples = EpochSamples(config, held_out, run.device) if run.lead else None
    torch.manual_seed(config["seed"])
    model = build_model(config).to(run.device)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config["lr"])
    ema = EMA(model, config["ema_decay"])  # every sample is drawn with the averaged weights
    done = run.begin(config, model, optimizer, ema=ema)
    x, cond = data.images.to(run.device), {}  # the training images and what the network is given beside x_t
    if config["cond"] == "class":
        cond["y"] = data.labels.to(run.device)
    if config["cond"] == "mask":
        cond["mask"] = data.masks.to(run.device)
    B, E = config["batch_size"], config["epochs"]
    steps = -(-len(x) // B)  # per epoch
    widths = f" {' '.join(map(str, config['unet_widths']))}" if config["net"] == "unet" else ""
    print(f"{config['model']} with {type(model.net).__name__}{widths} ({count_parameters(model.net):,} parameters) on "
          f"{config['dataset']} ({len(x)} {'volumes' if x.dim() == 5 else 'images'} {tuple(x.shape[1:])}), T={model.T},"
          f" {steps} steps of {B} per epoch, {lr_plan(config, E * steps)},"
          f" samples by {samples.how if samples else '-'}, writing {run.out}/", flush=True)
    if done >= E and not config.get("guidance_sweep"):
        print(f"{run.out}/model.pth has finished {done} epochs already, so --epochs {E} leaves nothing to do: "
              "pass a larger --epochs to continue")
        return
    if run.lead and not done:
        save_start_figures(model, x[:8], config, run=run)
    for epoch in range(done + 1, E + 1):
        torch.manual_seed(config["seed"] + epoch)  # a resumed run draws what the uninterrupted one would
        model.train()
        start, bar, order = time.time(), Progress(steps, f"epoch {epoch}/{E}", "batches", show=run.lead), \
            torch.randperm(len(x), device=run.device)
        for k in bar.wrap(range(steps)):
            rows = order[k * B:(k + 1) * B]
            x0, c = x[rows], {key: v[rows] for key, v in cond.items()}  # Alg. 1 line 2: x0 ~ q(x0)
            if config["augment"]:                                      # flips, shifts, small rotations
                x0, mask = augment(x0, c.get("mask"))
                c = {**c, "mask": mask} if mask is not None else c
            c = {**c, **model.draws(x0, **c)}                         # lines 3-4: t and the noise
            x0, c = run.split(x0, c)                                   # torchrun: this process's rows
            with run.autocast():
                loss = model.loss(x0, **c)                             # line 5 (process.Process.loss)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step=(epoch - 1) * steps + k + 1, total=E * steps)
            optimizer.zero_grad(set_to_none=True)
            run.backward(loss)                                         # loss.backward()
            optimizer.step()                                           # line 5: the gradient step
            ema.update(model)
            run.log(loss, epoch, bar)
        seconds = {"train_seconds": time.time() - start}
        due = run.lead and (epoch % config["sample_every"] == 0 or epoch == E)
        figures, scores = samples.draw(ema.model, f"epoch {epoch}", epoch) if due else ({}, {})
        figures["loss_curve.png"] = lambda path: save_loss_curve(run.losses, run.metrics, path, ylabel=model.loss_name)
        seconds["sample_seconds"] = time.time() - start - seconds["train_seconds"]
        run.save_epoch(epoch, model, optimizer, ema=ema, figures=figures, scores=scores, seconds=seconds)
    for w in config.get("guidance_sweep") or [] if run.lead else []:
        ema.model.guidance_scale = w
        figures, _ = samples.draw(ema.model, f"epoch {E}, w={w:g}", E, score=False)
        figures[f"image_ep{E:03d}.png"](run.path(f"guidance_w{w:g}.png"))
        print(f"wrote {run.out}/guidance_w{w:g}.png", flush=True)
    print(f"done: samples {run.out}/image_ep*.png, scores {run.out}/metrics.csv, curves {run.out}/loss_curve.png. "
          f"Sample more with: python sample.py {run.out}/model.pth", flush=True)


class EMA:
    """Exponential moving average of the network weights, used for every sample drawn (Ho et al. App. B: decay
    0.9999). Warm-up as in TensorFlow's tf.train.ExponentialMovingAverage with num_updates: decay_n = min(decay,
    (1 + n) / (10 + n)), so early in a run the average follows the weights instead of the random initialisation.
    Until decay_n reaches decay (at 0.9999: 90,000 steps, 48 MNIST epochs) the average spans a fixed fraction of
    the steps so far, as Karras et al.'s power-function EMA does (2024, arXiv:2312.02696, eq. 3, gamma = 8):
    (1 + n) / (10 + n) is about (1 - 1 / (n + 1))^(gamma + 1). decay 0: the weights themselves."""

    def __init__(self, model, decay: float):
        self.decay, self.n = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False).eval()  # the whole process, averaged network

    @torch.no_grad()
    def update(self, model) -> None:
        """theta_ema <- decay_n theta_ema + (1 - decay_n) theta, after an optimiser step."""
        decay_n = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        torch._foreach_lerp_(list(self.model.net.parameters()), list(model.net.parameters()), 1 - decay_n)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n": self.n, "weights": self.model.net.state_dict()}


def learning_rate(config: dict, step: int, total: int) -> float:
    """The learning rate of training step `step` (1..total): a linear warm-up over the first `warmup` steps (Goyal
    et al. 2017), constant, then with lr_decay = f > 0 a linear decay to 0 over the last fraction f of the run."""
    scale = min(1.0, step / config["warmup"]) if config["warmup"] else 1.0
    f = config["lr_decay"]
    return config["lr"] * scale * (min(1.0, (total - step + 1) / (f * total)) if f else 1.0)


def lr_plan(config: dict, total: int) -> str:
    """learning_rate's plan in words, printed at the start so that a run's recipe is never hidden."""
    f = config["lr_decay"]
    decay = f", then to 0 over the last {f:.0%} ({round(f * total):,} steps)" if f else ", then constant"
    return f"lr {config['lr']:g} after {config['warmup']} warm-up steps{decay}"


def save_start_figures(model, x0: torch.Tensor, config: dict, run: Run) -> None:
    """Eq. (4) made visible on eight training images, and the beta schedules (where the process has one)."""
    generator = torch.Generator(x0.device).manual_seed(config["seed"])
    save_forward_diffusion(model, x0, run.path("forward_diffusion.png"), generator=generator)
    if model.has_beta_schedule:
        save_schedules(config["n_T"], config["schedule"], config["betas"], path=run.path("schedules.png"))


class EpochSamples:
    """The samples drawn after an epoch, from fixed noise and fixed conditions so that epochs compare: the first
    n_grid shown in the grid, the first eval_samples scored by the dataset's judge (metrics.judge_for)."""

    def __init__(self, config: dict, held_out, device):
        self.config, self.device = config, device
        masks = held_out.masks if held_out is not None else None
        self.judge = judge_for(config, with_masks=masks is not None) if config["eval_samples"] else None
        self.n_grid = 8 * config["num_classes"] if config["cond"] == "class" else config["num_samples"]
        self.n = max(self.n_grid, config["eval_samples"] if self.judge else 0)
        self.cond, self.masks = {}, None
        if config["cond"] == "class":
            self.cond["y"] = class_grid_labels(config["num_classes"]).repeat(-(-self.n // self.n_grid))[:self.n]
        if masks is not None:
            masks = masks[torch.arange(self.n) % len(masks)]
            self.cond.update({"mask": masks} if config["cond"] == "mask" else {})
            self.masks = masks if dataset_info(config["dataset"]).lesion == "bright" else None  # phantoms
        self.how = sampler_text(config["sampler"], config["sample_steps"], config["sample_eta"], T=config["n_T"]) + \
            (", clipped x0" if config["clip_x0"] else "")

    def draw(self, model, title: str, epoch: int, score: bool = True) -> tuple:
        """({image_ep<epoch>.png: write(path)}, scores: fid, class_accuracy, Dice ..., and the sampler that drew)."""
        config = self.config
        g = torch.Generator(self.device).manual_seed(config["seed"] + 1)
        cond = {k: v.to(self.device) for k, v in self.cond.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config["precision_used"] == "bf16"):
            x = draw(model, self.n, sample_shape(config), sampler=config["sampler"], steps=config["sample_steps"],
                     eta=config["sample_eta"], generator=g, progress=True, **cond).float().cpu()
        if not torch.isfinite(x).all():
            raise DataError("the samples of this epoch are not finite (NaN/inf): the network or the settings diverged")
        k = min(self.n_grid, 16) if config["cond"] == "mask" else self.n_grid  # masks: 16 triplets at most
        shown = {"masks": self.cond["mask"][:k]} if config["cond"] == "mask" else \
            {"labels": self.cond["y"][:k]} if config["cond"] == "class" else {}
        scores = {k: config[k] for k in ("sampler", "sample_steps", "sample_eta")} if score else {}
        if score and self.judge is not None:
            n = config["eval_samples"]
            given = {k: self.cond[c][:n] for k, c in (("labels", "y"), ("masks", "mask")) if c in self.cond}
            scores.update(self.judge(x[:n].clamp(-1, 1), **given))
        if score and self.masks is not None:  # phantom: the lesion is the only bright region
            scores.update(lesion_scores(x, self.masks))
        guided = f", guidance w={model.guidance_scale:g}" if config["cond"] == "class" else ""
        head = f"{config['model']}, {title}: {self.how}{guided}"
        return {f"image_ep{epoch:03d}.png": lambda path: save_sample_grid(x[:k], path, **shown, title=head)}, scores


def start(args) -> None:
    """The recipe, checked before anything is touched; the run folder locked; the data read; then train."""
    config = recipe(args)
    out = args.out or f"contents_{args.model}"
    with Run(out, resume=args.resume, overwrite=args.overwrite, device=args.device or "auto", precision=args.precision,
             threads=args.threads) as run:
        if args.resume:
            config = recipe(args, saved=run.saved_config())
        kw = {k: config.get(k) for k in ("data_dir", "channels", "data_path")}
        kw["image_size"] = config.get("image_size") if dataset_info(config["dataset"]).size else args.image_size
        data = load_dataset(config["dataset"], train=True, limit=config.get("limit"), **kw)
        held_out = load_dataset(config["dataset"], train=False, **kw) if dataset_info(config["dataset"]).masks \
            else None
        train(for_data(config, data), data, held_out, run=run)


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("RANK", "0") not in ("0", ""):  # torchrun: rank 0 alone reports progress
        sys.stdout = open(os.devnull, "w")
    run_script(parser, start, args)


if __name__ == "__main__":
    main(sys.argv[1:])
