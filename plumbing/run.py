"""One training run as main.py's loop sees it: `with Run(args) as run:`. Everything here is plumbing that
Algorithm 1 does not need: the run folder and its lock (runfolder.py), torchrun's processes (parallel.py),
the device, precision and threads (speed.py), resuming from a checkpoint, batches with their progress
line, reading the losses back, and the epoch's files saved all or nothing (files.py).

The loop calls it by plain names: run.batches(epoch) yields (x0, cond) for `model.loss(x0, **cond)`,
run.backward(loss), run.log(loss), run.save_epoch(...). Only the lead process (rank 0) writes.
"""
import contextlib
import math
import os
import signal
import time

import torch

from data import augment, dataset_info, load_dataset
from figures import sampler_text, save_loss_curve
from models import PROCESSES, build_process
from plumbing import parallel
from plumbing.catalog import VOLUME_BATCH, schedule_for, unet_version_for, unet_widths_for
from plumbing.checkpoints import load_checkpoint, load_weights, save_tensors
from plumbing.errors import DataError, cause, world
from plumbing.files import commit, discard, stage, write_json, write_loss_csv, write_metrics_csv
from plumbing.progress import Progress
from plumbing.runfolder import RunFolder
from plumbing.settings import ARCHITECTURE, TRAINING
from plumbing.speed import PRECISIONS, autocast, choose_precision, pick_device, thread_policy, training_check
from unet import count_parameters

EXPLODED = 1e3  # the eps-prediction loss starts near 1 (or 2 for an untrained net); far above it, training diverged
CHECK_EVERY = 50  # steps between reading the losses back (one host sync) and checking them


class Run:
    """A run folder locked for this run, the processes of torchrun, and the state to continue from."""

    def __init__(self, args):
        self.args, self.out = args, args.out or f"contents_{args.model}"
        self.rank, self.size = world()
        self.lead = self.rank == 0
        self.folder = RunFolder(self.out, args.resume, args.overwrite)
        self.losses, self.metrics, self.done, self.pending = [], [], 0, []

    def __enter__(self) -> "Run":
        args = self.args
        check_process(args)
        if self.size > 1 and args.batch_size < self.size:
            raise DataError(f"--batch-size {args.batch_size} is smaller than the {self.size} processes that share "
                            "each batch: use a larger --batch-size or fewer processes")
        self.device = pick_device(args.device)
        if self.lead:
            self.folder.check()
            self.folder.lock()
        try:
            if self.size > 1:
                self.device = parallel.start(self.device)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, *_) -> None:
        parallel.stop(finished=kind is None)
        if self.lead:
            self.folder.release()
        if kind is KeyboardInterrupt:  # Ctrl-C: say where the run stands
            raise KeyboardInterrupt(f"interrupted. {finished(self.out, self.done)}") from None

    def path(self, name: str) -> str:
        return self.folder.path(name)

    # --- before the first epoch -------------------------------------------------------------------

    def load_data(self) -> tuple:
        """(training set, held-out set with masks or None), as --dataset names them (data.py)."""
        a = self.args
        kw = {"data_dir": a.data_dir, "image_size": a.image_size, "channels": a.channels, "data_path": a.data_path}
        train_set = load_dataset(a.dataset, train=True, limit=a.limit, **kw)
        held_out = load_dataset(a.dataset, train=False, **kw) if dataset_info(a.dataset).masks else None
        self.train_set = train_set
        return train_set, held_out

    def configure(self, train_set) -> dict:
        """The run's config: the arguments plus what the data decided (make_config); saved in every checkpoint.
        --resume keeps the U-Net design (unet_version; 1 where its checkpoint has none) and the beta schedule the
        run began with, where the command line does not name them."""
        self.config = make_config(self.args, train_set)
        if self.args.resume:
            before = load_checkpoint(os.path.join(self.out, "model.pth"))["config"]
            if self.args.unet_version is None:
                self.config["unet_version"] = before.get("unet_version", 1)
            if self.args.schedule is None:
                self.config["schedule"] = before.get("schedule", self.config["schedule"])
        return self.config

    def begin(self, model, optimizer, ema) -> bool:
        """Continue from out/model.pth with --resume, choose the precision and threads, and wrap the network
        for torchrun. False: the run has already done its epochs (said in one line)."""
        args, config = self.args, self.config
        state = resume(self.out, config, model, optimizer, ema) if args.resume else {}
        self.losses, self.metrics = state.get("losses", []), state.get("metrics", [])
        self.done = state.get("epoch", 0)
        if self.lead:
            self.folder.clear()
        if self.done >= args.epochs and not args.guidance_sweep:
            print(f"{self.out}/model.pth has finished {self.done} epochs already, so --epochs {args.epochs} leaves "
                  "nothing to do: pass a larger --epochs to continue")
            return False
        self.images = self.train_set.images.to(self.device)
        self.cond = {k: getattr(self.train_set, f).to(self.device) for k, f in (("y", "labels"), ("mask", "masks"))
                     if config["cond"] == {"y": "class", "mask": "mask"}[k]}
        steps = sampler_text(args.sampler, args.sample_steps, args.sample_eta, args.n_T)
        print(f"{args.model} with {type(model.eps_model).__name__} ({count_parameters(model.eps_model):,} parameters)"
              f" on {args.dataset} ({len(self.images)} {'volumes' if config['dims'] == 3 else 'images'} "
              f"{tuple(self.images.shape[1:])}), T={model.T}, device {self.device}, samples by {steps}"
              f"{', clipped x0' if args.clip_x0 else ''}, writing {self.out}/", flush=True)
        self.threads, why = thread_policy(args.threads, state.get("config", {}).get("threads_used"))
        before = state.get("config", {}).get("precision_used")
        first = {k: v[:args.batch_size] for k, v in self.cond.items()}
        precision, because = choose_precision(args.precision, self.device, training_check(
            model, self.images[:args.batch_size], **first), before=before) if self.lead else ("fp32", "rank 0 decides")
        config.update(precision_used=parallel.from_rank0(precision, PRECISIONS, self.device, self.size),
                      precision_why=because, threads_used=torch.get_num_threads())
        print(f"precision {config['precision_used']} ({because}); {why}"
              + (f"; {self.size} processes (torchrun) share each batch" if self.size > 1 else ""), flush=True)
        if self.lead:
            write_json(config, self.path("config.json"))
        self.model, self.optimizer, self.ema = model, optimizer, ema
        model.eps_model = parallel.wrap(model.eps_model, self.device, self.size)  # DDP averages the gradients
        return True

    # --- the loop ---------------------------------------------------------------------------------

    def epochs(self):
        """The epochs still to train, each seeded so that a resumed run draws what an uninterrupted one would."""
        for epoch in range(self.done + 1, self.args.epochs + 1):
            torch.manual_seed(self.args.seed + epoch)
            self.epoch_losses = []
            self.t0 = time.time()
            yield epoch
        self.model.eps_model = parallel.unwrap(self.model.eps_model)

    @property
    def step(self) -> int:
        """The number of this training step, 1, 2, ... over the whole run (for the warm-up)."""
        return len(self.losses) + len(self.pending) + 1

    def autocast(self):
        return autocast(self.config["precision_used"], self.device)

    def batches(self, epoch: int):
        """(x0, cond) per step: a random batch of --batch-size (augmented with --augment), with its conditions.
        Under torchrun every process draws the whole batch alike and keeps its own rows, with their rows of
        Algorithm 1's t and eps (model.draws), so that the processes together train as one."""
        N, B = len(self.images), self.args.batch_size
        perm = torch.randperm(N, device=self.device)
        self.bar = Progress(range(0, N, B), -(-N // B), f"epoch {epoch}/{self.args.epochs}", "batches",
                            show=self.lead)
        for i in self.bar:
            idx = perm[i:i + B]
            x0, cond = self.images[idx], {k: v[idx] for k, v in self.cond.items()}
            if self.args.augment:
                x0, mask = augment(x0, cond.get("mask"))
                cond.update({"mask": mask} if mask is not None else {})
            self.last = i + B >= N
            if self.size == 1:
                yield x0, cond
                continue
            rows = parallel.rows(len(x0), self.rank, self.size)
            cond.update(self.model.draws(x0, **cond))
            self.share = (rows.stop - rows.start) * self.size / len(x0)  # this process's part of the batch mean
            yield x0[rows], {k: v[rows] for k, v in cond.items()}

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(). Under torchrun DDP averages the processes' gradients; each loss is weighted by
        its share of the batch so that the average is the whole batch's gradient."""
        (loss * self.share).backward() if self.size > 1 else loss.backward()

    def log(self, loss: torch.Tensor) -> None:
        """Keep the step's loss; every CHECK_EVERY steps (and at the epoch's end) read them back in one host
        sync, log them and stop a diverged run in one line."""
        self.pending.append(loss.detach() * (self.share / self.size if self.size > 1 else 1))
        if self.threads.update():
            self.bar.note(threads=torch.get_num_threads())
        if len(self.pending) < CHECK_EVERY and not self.last:
            return
        for value in parallel.batch_losses(self.pending, self.size):  # the global batch's losses
            if not math.isfinite(value) or value > EXPLODED:
                raise DataError(f"the loss became {value:.3g} at step {len(self.losses) + 1}: training diverged; "
                                f"lower --lr (now {self.args.lr:g}) or check the schedule and --theta0. "
                                f"{finished(self.out, self.done)}")
            self.epoch_losses.append(value)
            self.losses.append((len(self.losses) + 1, self.done + 1, value))
        self.pending = []
        self.bar.note(loss=f"{sum(self.epoch_losses[-50:]) / len(self.epoch_losses[-50:]):.4f}")

    # --- once per epoch ---------------------------------------------------------------------------

    def sample_due(self, epoch: int) -> bool:
        """Whether this process draws and scores the samples of this epoch (--sample-every; always the last)."""
        return self.lead and (epoch % self.args.sample_every == 0 or epoch == self.args.epochs)

    def save_epoch(self, epoch: int, write_grid=None, scores: dict | None = None, sample_seconds: float = 0.0) -> None:
        """Log the epoch and write its files, all or nothing: the self-describing checkpoint model.pth, the grid,
        loss.csv, loss_curve.png and metrics.csv go to temporary files first and are renamed only when all were
        written, the checkpoint first. A full disk leaves the run as it was after the last epoch."""
        if not self.lead:
            self.done = epoch
            return
        train_s = time.time() - self.t0 - sample_seconds
        self.metrics.append({"epoch": epoch, "loss": round(sum(self.epoch_losses) / len(self.epoch_losses), 6),
                             "train_seconds": round(train_s, 1), "sample_seconds": round(sample_seconds, 1),
                             **(scores or {})})
        ema = self.ema
        state = {"model": parallel.unwrap(self.model.eps_model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "epoch": epoch, "ema": ema.state_dict() if ema is not None else None, "config": self.config,
                 "losses": self.losses, "metrics": self.metrics}
        name = getattr(self.model, "loss_name", "loss")
        writers = {"model.pth": lambda p: save_tensors(state, p), f"image_ep{epoch:03d}.png": write_grid,
                   "loss.csv": lambda p: write_loss_csv(self.losses, p),
                   "metrics.csv": lambda p: write_metrics_csv(self.metrics, p),
                   "loss_curve.png": lambda p: save_loss_curve(self.losses, self.metrics, p, name)}
        staged = stage_all(self, {k: w for k, w in writers.items() if w is not None}, epoch)
        with uninterrupted():  # Ctrl-C waits for the renames, so that the files and self.done agree
            commit(staged)
            self.done = epoch
        grid = f"{self.out}/image_ep{epoch:03d}.png, " if write_grid else f"{self.out}/"
        print(", ".join(f"{k} {v}" for k, v in self.metrics[-1].items()) + f" -> {grid}model.pth", flush=True)


def stage_all(run: Run, writers: dict, epoch: int) -> list:
    """Stage every file for commit; a failed write (OSError: disk full, no permission) keeps none of them and
    ends the run in one line. Any other failure is a bug, raised as it is (nothing kept)."""
    staged = []
    try:
        for name, write in writers.items():
            staged.append(stage(write, run.path(name)))
    except OSError as e:
        discard(staged)
        before = f"as it was after epoch {run.done}" if run.done else "without a checkpoint: no epoch has finished yet"
        again = "run again with --resume" if run.done else "run the same command again"
        raise DataError(f"could not write the files of epoch {epoch} ({e.strerror or cause(e)}): none of them was "
                        f"kept, so {run.out}/ is {before}; free some space, then {again}") from e
    except BaseException:
        discard(staged)
        raise
    return staged


@contextlib.contextmanager
def uninterrupted():
    """SIGINT (Ctrl-C) is held back until the block is done, where the platform allows (POSIX)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def finished(out: str, epoch: int) -> str:
    """Where the run stands, for messages that end it early."""
    if not epoch:
        return f"No epoch has finished yet, so {out}/ holds no checkpoint of this run"
    return f"The last finished epoch, {epoch}, is in {out}/model.pth; continue with --resume"


def check_process(args) -> None:
    """Build the diffusion process alone (an identity network, no data) so that settings it cannot
    represent, e.g. DDGM's Gamma noise for some theta_0 and T, are refused before loading data."""
    build_process(torch.nn.Identity(), {**vars(args), "schedule": args.schedule or "linear", "num_classes": 0})


def make_config(args, train_set) -> dict:
    """Everything needed to rebuild the model: the arguments plus what the data decided."""
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "defaulted")}
    N, C, *sides = train_set.images.shape  # count, channels, then H, W (volumes: D, H, W), all equal
    H = sides[-1]
    process = PROCESSES[args.model]  # a conditional process takes the labels, else the masks, unless --cond says
    cond = args.cond or (None if not process.conditional else "class" if train_set.labels is not None else "mask")
    if cond == "class" and train_set.labels is None:
        raise DataError(f"--cond class needs labels, and {args.dataset} has none: use --cond mask or labelled data")
    if cond == "mask" and train_set.masks is None:
        raise DataError(f"--cond mask needs masks, and {args.dataset} has none: use folder (with masks/) or phantom")
    if args.num_samples is None:  # volumes: 8, each shown by three slices
        args.num_samples = config["num_samples"] = 8 if len(sides) == 3 else 64
    if len(sides) == 3 and "batch_size" in getattr(args, "defaulted", []) and not args.paper_settings:
        args.batch_size = config["batch_size"] = VOLUME_BATCH  # plumbing/catalog.py: volumes train 8 at a time
    if len(sides) == 3 and args.augment:
        raise DataError("--augment flips, shifts and rotates 2D images; it does not work on volumes yet: leave it out")
    if args.unet_widths is None:  # the U-Net grows with the image (catalog.UNET_WIDTHS_BY_SIZE)
        args.unet_widths = unet_widths_for(H, len(sides))
    step = 2 ** (len(args.unet_widths) - 1)  # the U-Net halves the image once per level
    if args.net == "unet" and H % step:
        raise DataError(f"--net unet with {len(args.unet_widths)} widths needs image sides divisible by {step}, got "
                        f"{'x'.join(map(str, sides))}: set --image-size or give fewer --unet-widths")
    config.update(cond=cond, in_channels=C, image_size=H, dims=len(sides), betas=list(args.betas),
                  unet_version=args.unet_version or unet_version_for(H, len(sides)),
                  schedule=args.schedule or schedule_for(args.model, H, len(sides)),
                  unet_widths=list(args.unet_widths), attention_res=list(args.attention_res),
                  num_classes=int(train_set.labels.max()) + 1 if cond == "class" else 0,
                  cond_channels=1 if cond == "mask" else 0)
    return config


def resume(out: str, config: dict, model, optimizer, ema) -> dict:
    """The state in out/model.pth, loaded into model, optimizer and ema, if it was trained with the same
    architecture and training settings (settings.ARCHITECTURE, settings.TRAINING)."""
    state = load_checkpoint(os.path.join(out, "model.pth"))
    for key in ARCHITECTURE + TRAINING:
        if state["config"].get(key, config.get(key)) != config.get(key):
            raise DataError(f"--resume: {out}/model.pth was trained with {key}={state['config'].get(key)!r}, "
                            f"not {config.get(key)!r}: resume with the same setting, or start another --out")
    where = f"--resume: the weights in {out}/model.pth do not fit this network"
    load_weights(model.eps_model, state["model"], where)
    if ema is not None and state.get("ema"):
        load_weights(ema.model.eps_model, state["ema"]["weights"], where)
        ema.n = state["ema"]["n"]
    elif ema is not None:  # a checkpoint from before EMA: start the average from its weights
        ema.model.eps_model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"--resume: the optimiser state in {out}/model.pth does not fit this network "
                        f"({cause(e)}): pass the options it was trained with, or another --out") from e
    return state
