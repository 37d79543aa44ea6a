"""Where is the lesion? Anomaly localisation by diffusion reconstruction:
python anomaly.py CHECKPOINT --dataset phantom-anomaly [--t-lambda T] [--sampler ddpm|ddim] [--steps S]
                  [--repeats K] [--out FILE.png] [--sweep]

A model trained on healthy anatomy only (main.py DDPM --dataset phantom-healthy) cannot draw a
lesion. Noise a scan part of the way, x_t = q_sample(x_0, t_lambda) (Ho et al. eq. 4), run the
reverse process from t_lambda down to 0, and the reconstruction shows healthy anatomy where the scan
had a lesion: the anomaly map is |x_0 - x0_rec|, averaged over K noise draws (Wyatt et al. 2022,
"AnoDDPM"; the partial noising is SDEdit, Meng et al. 2021). Small t_lambda keeps the lesion; large
t_lambda loses the patient's own anatomy: --sweep shows the trade-off.

On the phantoms (true masks, a validation split) it prints the pixel AUROC over all test pixels
inside the head and the Dice at the threshold that is best on the validation split, for the
diffusion map and for two baselines: the best single intensity threshold and |x_0 - mean healthy
scan|. On other data (--dataset folder, or nifti for volumes) it writes the figure only, or, for a
mask-conditioned model and scans with masks, scores its counterfactual map the same way.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from data import DATASETS, load_dataset
from datatypes import DataError, Dataset
from models import SAMPLERS, check_sampler, draw, model_from_checkpoint
from plumbing.checkpoints import load_checkpoint
from plumbing.errors import Parser, run_script
from plumbing.files import check_outputs, png_out
from plumbing.progress import Progress
from plumbing.run import pick_device
from plumbing.settings import SEED_MAX

SWEEP = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6)  # t_lambda / T for --sweep
VALIDATION_SEED = 2  # the phantom-anomaly scans used to choose thresholds (test scans: seed 1)
FIGURE_ROWS = 6  # scans shown in the figure
FOLDERS = {"folder": 2, "nifti": 3}  # the user's own scans: images or volumes


# --- the detector -------------------------------------------------------------------------------

@torch.no_grad()
def reconstruct(model, x0: Tensor, t_lambda: int, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                generator=None, **cond) -> Tensor:
    """Noise x0 to paper time t_lambda with eq. (4), then denoise back to t = 0 with Algorithm 2
    (t_lambda steps) or DDIM (`steps` steps): the healthy anatomy the model believes in. cond goes to
    the network: an empty mask tells a mask-conditioned model that there is no lesion."""
    i = t_lambda - 1  # the index of paper time t_lambda (ddpm.py: index i is t = i + 1)
    t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
    x_t = model.q_sample(x0, t, model.noise_like(x0, t, generator))  # eq. (4)
    return draw(model, len(x0), tuple(x0.shape[1:]), sampler=sampler, steps=steps, eta=eta, generator=generator,
                x_start=x_t, t_start=i, **cond)


def gaussian_blur(m: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of maps (N, H, W) or (N, D, H, W) with std sigma pixels (0: unchanged):
    one 1D convolution along each spatial axis, edges replicated."""
    if sigma <= 0:
        return m
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=m.dtype, device=m.device) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, -1)
    for axis in range(1, m.dim()):
        lines = m.movedim(axis, -1)
        flat = F.pad(lines.reshape(-1, 1, lines.shape[-1]), (r, r), mode="replicate")
        m = F.conv1d(flat, k).reshape(lines.shape).movedim(-1, axis)
    return m


def anomaly_maps(model, x0: Tensor, t_lambda: int, *, sampler: str, steps: int, eta: float, repeats: int,
                 smooth: float, generator=None, batch: int = 256, label: str = "scans",
                 counterfactual: bool = False) -> tuple:
    """(maps (N, H, W), one reconstruction per scan (N, C, H, W)): |x_0 - x0_rec| averaged over channels
    and `repeats` noise draws, then smoothed by a Gaussian of std `smooth` pixels. counterfactual: the
    model is mask-conditioned and reconstructs with an empty mask, "no tumour" (Sanchez et al. 2022)."""
    device = model.device
    maps, recs = [], []
    for s in Progress(-(-len(x0) // batch), f"reconstructing {label}", "batches").wrap(range(0, len(x0), batch)):
        x = x0[s:s + batch].to(device)
        total = torch.zeros(x.shape[0], *x.shape[2:], device=device)
        for k in range(repeats):
            cond = {"mask": torch.zeros_like(x[:, :1])} if counterfactual else {}
            rec = reconstruct(model, x, t_lambda, sampler=sampler, steps=steps, eta=eta, generator=generator, **cond)
            total += (x - rec).abs().mean(1)
            if k == 0:
                recs.append(rec.cpu())
        maps.append(gaussian_blur(total / repeats, smooth).cpu())
    maps = torch.cat(maps)
    if not torch.isfinite(maps).all():
        raise DataError("the anomaly maps are not finite (NaN/inf): the model's reconstructions diverged")
    return maps, torch.cat(recs)


# --- the scores -----------------------------------------------------------------------------------

def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve = P(score of a lesion pixel > score of a healthy one), ties counting
    half: the Mann-Whitney U statistic over the rank sum of the positives."""
    from scipy.stats import rankdata
    s, y = scores.flatten().double().numpy(), labels.flatten().bool().numpy()
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        raise DataError("the anomaly maps cannot be scored: AUROC needs both lesion and healthy pixels inside the "
                        "heads, and these masks mark only one kind; check the masks/ folder")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - P * (P + 1) / 2) / (P * N))


def dice(pred: Tensor, labels: Tensor) -> float:
    """2 |A and B| / (|A| + |B|), pooled over all pixels given (1.0 when both are empty)."""
    a, b = pred.flatten().bool(), labels.flatten().bool()
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def best_threshold(scores: Tensor, labels: Tensor) -> float:
    """The threshold thr that maximises the Dice of (scores >= thr) against labels: scores sorted
    descending, Dice after the first k pixels is 2 TP_k / (k + P), taken only where the score changes."""
    s, order = scores.flatten().double().sort(descending=True)
    tp = labels.flatten().double()[order].cumsum(0)
    k = torch.arange(1, len(s) + 1, dtype=torch.float64)
    d = 2 * tp / (k + labels.sum().double())
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[:-1] != s[1:]
    return float(s[torch.where(last_of_tie, d, torch.full_like(d, -1)).argmax()])


def score(val_map: Tensor, val_mask: Tensor, val_head: Tensor, test_map: Tensor, test_mask: Tensor,
          test_head: Tensor) -> dict:
    """Test AUROC over pixels inside the head, and test Dice at the validation split's best threshold."""
    thr = best_threshold(val_map[val_head], val_mask[val_head])
    return {"auroc": auroc(test_map[test_head], test_mask[test_head]),
            "dice": dice(test_map[test_head] >= thr, test_mask[test_head]), "threshold": thr}


def baselines(val: Tensor, val_mask: Tensor, val_head: Tensor, test: Tensor, test_mask: Tensor,
              test_head: Tensor, healthy_mean: Tensor, mean_name: str = "mean healthy scan") -> dict:
    """Maps that need no model, scored the same way: the intensity itself (bright lesions) or its
    negative (dark ones), whichever scores the higher AUROC on the validation split, and the
    absolute difference from the mean healthy scan."""
    up = auroc(val[val_head], val_mask[val_head]) >= 0.5
    sign = 1 if up else -1
    return {f"intensity ({'bright' if up else 'dark'} = lesion)":
            score(sign * val, val_mask, val_head, test_map=sign * test, test_mask=test_mask, test_head=test_head),
            f"|x - {mean_name}|":
            score((val - healthy_mean).abs(), val_mask, val_head, test_map=(test - healthy_mean).abs(),
                  test_mask=test_mask, test_head=test_head)}


# --- the command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="anomaly.py", description="Anomaly maps by partial noising and denoising (AnoDDPM) with a "
               "main.py checkpoint trained on healthy scans.")
    p.add_argument("checkpoint", help="a model.pth written by main.py (e.g. trained on --dataset phantom-healthy)")
    p.add_argument("--dataset", default="phantom-anomaly",
                   choices=[n for n, info in DATASETS.items() if info.lesion or n in FOLDERS],
                   help="test scans: a phantom (scored), or folder or nifti (figure of its first 6 scans only)")
    p.add_argument("--data-dir", default="./data", help="--dataset folder or nifti: images/ (and masks/ for the "
                   "outline)")
    p.add_argument("--t-lambda", type=int, help="paper time to noise to, 1..T (default: T/4)")
    p.add_argument("--sampler", choices=list(SAMPLERS), help="reverse process, one of models.SAMPLERS (ddim: --steps, "
                   "--eta; ddpm: Algorithm 2, t_lambda steps; default: ddim where the process has it, else its own)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps from t_lambda to 0")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic given x_t)")
    p.add_argument("--repeats", type=int, default=4, help="noise draws K averaged per map")
    p.add_argument("--smooth", type=float, default=1.0, help="Gaussian std in pixels applied to the map (0: none)")
    p.add_argument("--n", type=int, default=256, help="test scans (phantoms)")
    p.add_argument("--n-val", type=int, default=128, help="validation scans that choose the Dice thresholds")
    p.add_argument("--sweep", action="store_true", help=f"also write FILE_sweep.png: AUROC and Dice against t_lambda "
                   f"at {', '.join(f'{f:g}' for f in SWEEP)} x T")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise draws")
    p.add_argument("--out", help="output PNG (default: anomaly.png beside the checkpoint)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights are saved")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    return p


def check(args) -> None:
    """Numbers out of range end here with one line (exit 2), before the checkpoint is read."""
    checks = [(args.t_lambda is None or args.t_lambda >= 1, "--t-lambda must be at least 1"),
              (1 <= args.steps <= 10_000, "--steps must lie in 1..10000"),
              (math.isfinite(args.eta) and 0 <= args.eta <= 1, "--eta must lie in [0, 1]"),
              (1 <= args.repeats <= 100, "--repeats must lie in 1..100"),
              (math.isfinite(args.smooth) and 0 <= args.smooth <= 20, "--smooth must lie in 0..20 pixels"),
              (1 <= args.n <= 100_000 and 1 <= args.n_val <= 100_000, "--n and --n-val must lie in 1..100000"),
              (0 <= args.seed <= SEED_MAX, f"--seed must lie in 0..{SEED_MAX}")]
    for ok, message in checks:
        if not ok:
            raise DataError(message)


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    run_script(p, lambda a: (check(a), run(a)), args, memory="lower --n, --n-val or --repeats")


def test_scans(args, config: dict) -> tuple:
    """(test set, validation set or None, mean healthy scan or None) at the model's image size."""
    size, C, dims = config["image_size"], config["in_channels"], config.get("dims", 2)
    if args.dataset in FOLDERS and FOLDERS[args.dataset] != dims:
        raise DataError(f"--dataset {args.dataset} holds {'volumes' if dims == 2 else 'images'} and this model was "
                        f"trained on {'images' if dims == 2 else 'volumes'}: use --dataset "
                        f"{'folder' if dims == 2 else 'nifti'}")
    channels = C if args.dataset == "folder" else None
    if args.dataset in FOLDERS and config.get("cond") == "mask":  # real scans with lesion masks, held out
        held = load_dataset(args.dataset, args.data_dir, train=False, image_size=size, channels=channels)
        if held.masks is None or len(held.images) < 4:
            raise DataError(f"{args.data_dir} needs masks/ and at least 40 scans (4 held out) to score the maps")
        half = len(held.images) // 2  # the first half of the held-out scans chooses t_lambda and the threshold
        train = load_dataset(args.dataset, args.data_dir, train=True, image_size=size, channels=channels)
        cut = lambda s: Dataset(*(None if a is None else a[s] for a in held))  # noqa: E731
        return cut(slice(half, None)), cut(slice(None, half)), train.images.mean(0)
    if args.dataset in FOLDERS:
        return load_dataset(args.dataset, args.data_dir, train=True, image_size=size, channels=channels), None, None
    if C != 1:
        raise DataError(f"the phantoms are grayscale and this model takes {C} channels")
    from synthetic import make_phantom, make_phantom3d
    volumes = args.dataset.startswith("phantom3d")
    if volumes != (config.get("dims", 2) == 3):
        raise DataError(f"--dataset {args.dataset} holds {'volumes' if volumes else 'images'} and this model was "
                        f"trained on {'images' if volumes else 'volumes'}: use --dataset "
                        f"{'phantom-anomaly' if volumes else 'phantom3d-anomaly'}")
    make = make_phantom3d if volumes else make_phantom  # the same phantoms, in 3D
    lesion = DATASETS[args.dataset].lesion
    test = make(args.n, size, seed=1, lesion=lesion)
    if lesion == "none":
        return test, None, None
    val = make(args.n_val, size, seed=VALIDATION_SEED, lesion=lesion)
    healthy_mean = make(2048 if not volumes else 512, size, seed=0, lesion="none").images.mean(0)
    return test, val, healthy_mean


def axial_slices(*tensors) -> list:
    """Volumes (N, C, D, H, W) and maps (N, D, H, W) by their axial mid-slice (figures.axial), for the 2D
    figure; images as they are."""
    from figures import axial
    volumes = tensors[0].dim() == 5
    return [t if t is None or not volumes else axial(t) for t in tensors]


def run(args) -> None:
    """Load the model, choose t_lambda (counterfactual maps: by the validation scans), map the test scans,
    score them beside the baselines, and with --sweep score every t_lambda of SWEEP."""
    from figures import save_anomaly_figure
    if not os.path.isfile(args.checkpoint):  # first: the default --out lies beside it
        raise DataError(f"no checkpoint at {args.checkpoint} (no such file, or not a regular file): train one with "
                        "main.py first, or check the path")
    out = png_out("--out", args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "anomaly.png"))
    check_outputs({"--out": out, **({"--out (its _sweep.png)": os.path.splitext(out)[0] + "_sweep.png"}
                                    if args.sweep else {})}, [args.checkpoint])
    maps, config = Maps.load(args)
    test, val, healthy_mean = test_scans(args, config)
    if val is None:  # nothing to score: map only the scans the figure shows
        test = Dataset(*(None if a is None else a[:FIGURE_ROWS] for a in test))
    t_lambda = args.t_lambda or (choose_t_lambda(maps, val) if maps.counterfactual else max(1, round(maps.T / 4)))
    steps = min(args.steps, t_lambda)
    how = {"ddim": f"DDIM {steps} steps, eta {args.eta:g}", "ddpm": f"Algorithm 2, {t_lambda} steps"}.get(
        maps.sampler, f"{maps.sampler}, {steps} steps")
    told = " with an empty condition mask (counterfactual: no tumour)" if maps.counterfactual else ""
    print(f"{len(test.images)} {args.dataset} scans: noise to t_lambda={t_lambda} of T={maps.T}, denoise by {how}"
          f"{told}, {args.repeats} draws per map, Gaussian smoothing sigma {args.smooth:g} px", flush=True)
    test_map, recs = maps.at(t_lambda, test.images, "test scans")
    save_anomaly_figure(*axial_slices(test.images, recs, test_map, test.masks), out, rows=FIGURE_ROWS)
    if val is None or test.masks is None:
        print(f"wrote {out} (scan | reconstruction | anomaly map | true mask outline); no score: "
              f"{args.dataset} has no validation split with lesion masks", flush=True)
        return
    val_map, _ = maps.at(t_lambda, val.images, "validation scans")
    r = score(val_map, masks(val), head(val), test_map=test_map, test_mask=masks(test), test_head=head(test))
    print(f"n={len(test.images)} auroc={r['auroc']:.4f} dice={r['dice']:.4f} t_lambda={t_lambda}", flush=True)
    base = baselines(val.images[:, 0], masks(val), head(val), test=test.images[:, 0], test_mask=masks(test),
                     test_head=head(test), healthy_mean=healthy_mean[0],
                     mean_name="mean training scan" if maps.counterfactual else "mean healthy scan")
    for name, b in base.items():
        print(f"  baseline {name}: auroc={b['auroc']:.4f} dice={b['dice']:.4f}", flush=True)
    print(f"wrote {out} (scan | reconstruction | anomaly map | true mask outline)", flush=True)
    if args.sweep:
        sweep(maps, test, val, base=base, path=os.path.splitext(out)[0] + "_sweep.png")


class Maps:
    """The anomaly maps of one model with the script's settings: at(t_lambda, scans, label) -> (maps, recs)."""

    def __init__(self, model, args, sampler: str, counterfactual: bool):
        self.model, self.args, self.sampler, self.counterfactual, self.T = model, args, sampler, counterfactual, model.T
        self.generator = torch.Generator(model.device).manual_seed(args.seed)

    @classmethod
    def load(cls, args) -> tuple:
        """(Maps, config) of the checkpoint, refusing in one line what it cannot map."""
        ckpt = load_checkpoint(args.checkpoint)
        config = ckpt["config"]
        counterfactual = config.get("cond") == "mask"
        if config.get("cond") == "class":
            raise DataError("anomaly.py needs an unconditional or a mask-conditioned model, not a class-conditional "
                            "one")
        if counterfactual and args.dataset not in FOLDERS:
            raise DataError("a mask-conditioned model maps real scans: use --dataset folder (or nifti) --data-dir DIR "
                            "(images/ and masks/)")
        model = model_from_checkpoint(ckpt, pick_device(args.device), use_ema=not args.no_ema, path=args.checkpoint)
        if args.t_lambda is not None and args.t_lambda > model.T:
            raise DataError(f"--t-lambda must lie in 1..{model.T} (T of this model)")
        sampler = args.sampler or ("ddim" if "ddim" in model.samplers else model.samplers[0])
        check_sampler(model, sampler)
        return cls(model, args, sampler, counterfactual=counterfactual), config

    def at(self, t_lambda: int, x: Tensor, label: str) -> tuple:
        a = self.args
        return anomaly_maps(self.model, x, t_lambda, sampler=self.sampler, steps=a.steps, eta=a.eta, repeats=a.repeats,
                            smooth=a.smooth, generator=self.generator, label=label, counterfactual=self.counterfactual)


def head(d: Dataset) -> Tensor:
    from synthetic import head_region
    return head_region(d.images[:, 0])


def masks(d: Dataset) -> Tensor:
    return d.masks[:, 0].bool()


def choose_t_lambda(maps: Maps, val: Dataset) -> int:
    """The counterfactual map's t_lambda: the one of SWEEP with the best AUROC on the validation scans."""
    aurocs = {}
    for t in sorted({max(1, round(f * maps.T)) for f in SWEEP}):
        vm, _ = maps.at(t, val.images, f"validation scans, t_lambda={t}")
        aurocs[t] = auroc(vm[head(val)], masks(val)[head(val)])
        print(f"  validation t_lambda={t}: auroc={aurocs[t]:.4f}", flush=True)
    best = max(aurocs, key=aurocs.get)
    print(f"t_lambda={best}: the best AUROC on the {len(val.images)} validation scans", flush=True)
    return best


def sweep(maps: Maps, test: Dataset, val: Dataset, base: dict, path: str) -> None:
    """--sweep: AUROC and Dice of the test maps at every t_lambda of SWEEP (thresholds from the validation maps)."""
    from figures import save_anomaly_sweep
    rows = []
    for t in sorted({max(1, round(f * maps.T)) for f in SWEEP}):
        tm, _ = maps.at(t, test.images, f"test scans, t_lambda={t}")
        vm, _ = maps.at(t, val.images, f"validation scans, t_lambda={t}")
        rows.append((t, score(vm, masks(val), head(val), test_map=tm, test_mask=masks(test), test_head=head(test))))
        print(f"  sweep t_lambda={t}: auroc={rows[-1][1]['auroc']:.4f} dice={rows[-1][1]['dice']:.4f}", flush=True)
    save_anomaly_sweep(rows, base, maps.T, path=path)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
