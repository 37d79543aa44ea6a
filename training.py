"""What main.py's training loop calls besides Algorithm 1: the run's config and folder, the
model, optimiser and EMA to start or resume from, the per-epoch samples with their scores, and
the self-describing checkpoint written after every epoch."""
import math
import os

import torch

from catalog import VOLUME_BATCH, unet_widths_for
from data import DataError, dataset_info, load_dataset
from errors import cause, is_disk_full
from figures import class_grid_labels, mask_triplets, save_grid, save_loss_curve
from files import commit, discard, stage, write_loss_csv, write_metrics_csv
from metrics import lesion_scores
from models import ARCHITECTURE, EMA, build_model, draw, load_checkpoint, load_weights, pick_device, sample_shape
from parallel import from_rank0, unwrap
from speed import PRECISIONS, autocast, choose_precision, training_check

# Settings that change what training does: --resume refuses a change (the rest, e.g. --epochs, may change).
TRAINING = ("lr", "warmup", "batch_size", "limit", "seed", "ema_decay", "p_uncond", "min_snr", "augment")


EXPLODED = 1e3  # the eps-prediction loss starts near 1 (or 2 for an untrained net); far above it, training diverged
CHECK_EVERY = 50  # steps between reading the losses back (one host sync) and checking them


def train_step(model, optimizer, ema, x0: torch.Tensor, step: int, lr: float, warmup: int, *,
               precision: str = "fp32", rows: slice | None = None, processes: int = 1, **cond) -> torch.Tensor:
    """Algorithm 1, one step, as main.py and bench.py train: the loss of a batch x0 (lines 2-5, DDPM.loss)
    in `precision` (speed.py), the warm-up learning rate of this step (1, 2, ...), backward, Adam, then the
    EMA of the weights. rows, processes: this rank's rows of the batch and the number of ranks (parallel.py).
    Returns the loss (this rank's share of it) as a tensor, not read back, so that no step waits for the host;
    the caller checks it (diverged) every CHECK_EVERY steps."""
    with autocast(precision, x0.device):
        loss = model.loss(x0, rows=rows, **cond)
    for group in optimizer.param_groups:
        group["lr"] = warmup_lr(lr, warmup, step)
    optimizer.zero_grad(set_to_none=True)
    (loss * processes).backward()  # DDP averages the ranks' gradients; `processes` x their mean is the batch's
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return loss.detach()


def diverged(loss: float) -> bool:
    return not math.isfinite(loss) or loss > EXPLODED


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of training step `step` (1, 2, ...): linear warm-up from 0 over `warmup` steps
    (Goyal et al. 2017), then constant."""
    return lr * min(1.0, step / warmup) if warmup else lr


def check_process(args) -> None:
    """Build the diffusion process alone (no data, no network) so that settings it cannot
    represent, e.g. DDGM's Gamma noise for some theta_0 and T, are refused before loading data."""
    from ddgm import DDGM
    from ddpm import SCHEDULES
    if args.model == "DDGM":
        DDGM(torch.nn.Identity(), SCHEDULES[args.schedule](args.n_T, tuple(args.betas)), theta_0=args.theta0,
             loss_type=args.loss)
    pick_device(args.device)


def make_config(args, train_set) -> dict:
    """Everything needed to rebuild the model: the arguments plus what the data decided."""
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "defaulted")}
    N, C, *sides = train_set.images.shape  # count, channels, then H, W (volumes: D, H, W), all equal
    H = sides[-1]
    cond = args.cond or (None if args.model != "COND" else "class" if train_set.labels is not None else "mask")
    if cond == "class" and train_set.labels is None:
        raise DataError(f"--cond class needs labels, and {args.dataset} has none: use --cond mask or labelled data")
    if cond == "mask" and train_set.masks is None:
        raise DataError(f"--cond mask needs masks, and {args.dataset} has none: use folder (with masks/) or phantom")
    if args.num_samples is None:  # volumes: 8, each shown by three slices
        args.num_samples = config["num_samples"] = 8 if len(sides) == 3 else 64
    if len(sides) == 3 and "batch_size" in getattr(args, "defaulted", []) and not args.paper_settings:
        args.batch_size = config["batch_size"] = VOLUME_BATCH  # catalog.py: volumes train 8 at a time
    if len(sides) == 3 and args.augment:
        raise DataError("--augment flips, shifts and rotates 2D images; it does not work on volumes yet: leave it out")
    if args.unet_widths is None:  # the U-Net grows with the image (catalog.UNET_WIDTHS_BY_SIZE)
        args.unet_widths = unet_widths_for(H, len(sides))
    step = 2 ** (len(args.unet_widths) - 1)  # the U-Net halves the image once per level
    if args.net == "unet" and H % step:
        raise DataError(f"--net unet with {len(args.unet_widths)} widths needs image sides divisible by {step}, got "
                        f"{'x'.join(map(str, sides))}: set --image-size or give fewer --unet-widths")
    config.update(cond=cond, in_channels=C, image_size=H, dims=len(sides), betas=list(args.betas),
                  unet_widths=list(args.unet_widths), attention_res=list(args.attention_res),
                  num_classes=int(train_set.labels.max()) + 1 if cond == "class" else 0,
                  cond_channels=1 if cond == "mask" else 0)
    return config


def judge(args, config: dict, train_set):
    """The per-epoch score of the samples (metrics.py): fid by a classifier for labelled data, by a
    segmenter for data with masks; None (and eval_samples 0: the grid only) for data without a judge."""
    from metrics import MaskScore, QualityScore
    kind = dataset_info(args.dataset).judge
    if args.eval_samples and kind == "classifier" and train_set.labels is not None:
        return QualityScore(args.dataset, args.data_dir, image_size=args.image_size)
    if args.eval_samples and kind == "segmenter" and train_set.masks is not None:
        return MaskScore(args.data_dir, config["image_size"], channels=args.channels)
    if args.eval_samples:
        print(f"no fid for {args.dataset}: metrics.py scores datasets with a judge in data.DATASETS (labelled ones "
              "with a test split, folders with masks)")
        config["eval_samples"] = 0
    return None


def pick_precision(requested: str, config: dict, model, x0: torch.Tensor, y_all, m_all, lead: bool, size: int,
                   before: str | None = None) -> None:
    """config["precision_used"] and ["precision_why"] for --precision (speed.choose_precision), timed on the
    first batch x0 by rank 0 and agreed by all ranks (parallel.from_rank0). before: the precision of the run
    being resumed, which auto keeps where this machine can run it natively, so that a resumed run trains on
    as it began."""
    cond = {k: v[:len(x0)] for k, v in (("y", y_all), ("mask", m_all)) if v is not None}
    precision, why = choose_precision(requested, x0.device, training_check(model, x0, **cond), before=before) \
        if lead else ("fp32", "rank 0 decides")
    config.update(precision_used=from_rank0(precision, PRECISIONS, x0.device, size), precision_why=why)


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
    bright = dataset_info(config["dataset"]).lesion == "bright"  # the lesion is the only bright region
    return {"n": n, "n_grid": n_grid, "cond": cond, "masks": masks if bright else None}


def sample_and_score(model, config, setup, device, score=None) -> tuple:
    """Draw the per-epoch samples from fixed noise (same seed every call) and return (write_grid,
    metrics): write_grid(path) saves their grid; metrics holds fid, class_accuracy, Dice for phantom."""
    g = torch.Generator(device).manual_seed(config["seed"] + 1)
    cond = {k: v.to(device) for k, v in setup["cond"].items()}
    shape = sample_shape(config)
    with autocast(config.get("precision_used", "fp32"), device):
        x = draw(model, setup["n"], shape, sampler=config["sampler"], steps=config["sample_steps"],
                 eta=config.get("sample_eta", 0.0), generator=g, progress=True, **cond).float().cpu()
    if not torch.isfinite(x).all():
        raise DataError("the samples of this epoch are not finite (NaN/inf): the network or the settings diverged")
    k = setup["n_grid"]
    rows = None
    if config["cond"] == "mask":
        grid = mask_triplets(x[:min(k, 16)], setup["cond"]["mask"][:min(k, 16)])
        nrow = 6 if x.dim() == 4 else 9  # two samples per row; volumes: one, its three mid-slices
    else:
        grid, nrow = x[:k], 8 if x.dim() == 4 else 4  # volumes: 4 per row, each by its 3 mid-slices
        rows = [f"y={c}" for c in range(config["num_classes"])] if config["cond"] == "class" else None
    metrics = {}
    if score is not None and config["eval_samples"]:
        n = config["eval_samples"]
        given = {k: setup["cond"][c][:n] for k, c in (("labels", "y"), ("masks", "mask")) if c in setup["cond"]}
        metrics.update(score(x[:n].clamp(-1, 1), **given))
    if setup["masks"] is not None:  # phantom: the lesion is the only bright region
        metrics.update(lesion_scores(x, setup["masks"]))
    return (lambda path: save_grid(grid, path, nrow=nrow, row_labels=rows)), metrics


def prepare(args, out: str):
    """Device, data (training set and held-out set), config, model, optimiser, EMA, and the state to
    continue from: {"epoch", "losses", "metrics"}, from out/model.pth with --resume."""
    device = pick_device(args.device)
    data_kw = {"data_dir": args.data_dir, "image_size": args.image_size, "channels": args.channels,
               "data_path": args.data_path}
    train_set = load_dataset(args.dataset, train=True, limit=args.limit, **data_kw)
    held_out = load_dataset(args.dataset, train=False, **data_kw) if dataset_info(args.dataset).masks else None
    config = make_config(args, train_set)
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.eps_model.parameters(), lr=args.lr)
    ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
    state = {"epoch": 0, "losses": [], "metrics": []}
    if args.resume:
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
    return device, train_set, held_out, config, model, optimizer, ema, state


def save_epoch(folder, model, optimizer, ema, epoch: int, config: dict, losses: list, metrics: list, write_grid,
               done: dict) -> None:
    """The epoch's files, all or nothing: the self-describing checkpoint model.pth, the grid, loss.csv,
    loss_curve.png and metrics.csv are written to temporary files first and renamed only when all
    were written, the checkpoint first. A full disk leaves the run as it was after the last epoch."""
    state = {"model": unwrap(model.eps_model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "ema": ema.state_dict() if ema is not None else None,
             "config": config, "losses": losses, "metrics": metrics}
    l1 = config["model"] == "DDGM" and config["loss"] == "l1"
    writers = {"model.pth": lambda p: torch.save(state, p), f"image_ep{epoch:03d}.png": write_grid,
               "loss.csv": lambda p: write_loss_csv(losses, p), "metrics.csv": lambda p: write_metrics_csv(metrics, p),
               "loss_curve.png": lambda p: save_loss_curve(losses, metrics, p, "L1 loss" if l1 else "MSE loss")}
    if write_grid is None:  # --sample-every: no grid this epoch
        del writers[f"image_ep{epoch:03d}.png"]
    staged = []
    try:
        for name, write in writers.items():
            staged.append(stage(write, folder.path(name)))
    except (OSError, RuntimeError) as e:
        discard(staged)
        if isinstance(e, RuntimeError) and not is_disk_full(e):
            raise
        before = f"as it was after epoch {done['epoch']}" if done["epoch"] else "without a checkpoint: no epoch " \
            "has finished yet"
        why = e.strerror if isinstance(e, OSError) and e.strerror else cause(e)
        again = "run again with --resume" if done["epoch"] else "run the same command again"
        raise DataError(f"could not write the files of epoch {epoch} ({why}): none of them was kept, so "
                        f"{folder.out}/ is {before}; free some space, then {again}") from e
    commit(staged)
