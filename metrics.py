"""Offline sample quality: python metrics.py SAMPLES.npz --dataset mnist [--data-dir D].

Inception FID needs weights that cannot be downloaded offline and suits 28x28 grayscale and
medical images badly. Instead, per labelled dataset, a small LeNet-style classifier is trained
on the training split (cached under DATA_DIR/classifiers/, retrained when the data change) and:
- fid: the Frechet distance (Dowson & Landau 1982) between Gaussians fitted to its penultimate
  features of the samples and of the test split, as FID does with Inception features (Heusel
  et al. 2017, arXiv:1706.08500). Lower is better; it depends on the number of samples;
- fid_real: the same for as many real test images as samples: the floor to compare against;
- class_accuracy: for class-conditional samples, how often the classifier sees the requested class.
For folder datasets with masks (e.g. brain MRI with tumour masks), MaskScore does the same with a
small segmentation U-Net trained once on the real training split (image -> lesion mask, cached):
- mask_dice: Dice between each sample's condition mask and the segmenter's mask of the sample;
- mask_dice_real: the segmenter on real held-out slices against their true masks (the ceiling);
- fid and fid_real with the segmenter's encoder features, against the training split;
- critic_accuracy (metrics.py): how well a small classifier, trained on half of the held-out slices against half
  of the samples, tells the other halves apart (0.5: indistinguishable). fid sits at its floor for good MRI
  models; the critic still sees flatter contrast or a greyer background;
- critic_real: the same critic between the held-out slices and as many real training slices: its floor. The
  held-out patients are not the training patients, and the critic tells them apart too.
For the phantoms (phantom, phantom3d), whose lesion is the only tissue brighter than 0.8, no judge is
trained: lesion_dice scores mask-conditioned samples against their masks, beside shuffled masks (chance).
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data import augment, dataset_info, fingerprint, load_dataset
from datatypes import DataError, unnormalize_to_zero_to_one
from formats import read_npz
from plumbing.checkpoints import save_tensors
from plumbing.errors import Parser, run_script
from plumbing.files import save_atomic
from plumbing.progress import Progress

FEATURES = 128
SEGMENTER_STEPS = 1500  # batches of 16 for the segmenter judge: about 2.5 minutes at 64 px on 2 cores


class FeatureNet(nn.Module):
    """LeNet-style classifier (LeCun et al. 1998) for C x H x W images in [-1, 1] (dims=3: C x D x H x W
    volumes, with 3D convolutions and pooling); features() is the penultimate layer (FEATURES values) that
    the Frechet distance compares."""

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2):
        super().__init__()
        conv, pool, cells = (nn.Conv2d, nn.MaxPool2d, 4) if dims == 2 else (nn.Conv3d, nn.MaxPool3d, 2)
        average = nn.AdaptiveAvgPool2d(cells) if dims == 2 else nn.AdaptiveAvgPool3d(cells)
        self.body = nn.Sequential(
            conv(in_channels, 32, 3, padding=1), nn.GELU(), pool(2),
            conv(32, 64, 3, padding=1), nn.GELU(), pool(2),
            average, nn.Flatten(), nn.Linear(64 * cells ** dims, FEATURES), nn.GELU())
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Dowson & Landau 1982: d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
    The square roots come from symmetric eigendecompositions with negative round-off clipped to 0,
    so rank-deficient covariances (fewer samples than features) are safe. Inputs float64."""
    def sqrt_psd(a: Tensor) -> Tensor:
        w, v = torch.linalg.eigh((a + a.T) / 2)
        return (v * w.clamp(min=0).sqrt()) @ v.T
    s1 = sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()  # tr (S1^1/2 S2 S1^1/2)^1/2
    d2 = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(d2.item(), 0.0)


def feature_stats(features: Tensor) -> tuple:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (one sample: a zero covariance)."""
    f = features.double()
    return f.mean(0), torch.cov(f.T, correction=1) if len(f) > 1 else f.new_zeros(f.shape[1], f.shape[1])


def cache_path(data_dir: str, name: str, log) -> str:
    """Where a judge is cached: DATA_DIR/classifiers/name; where that folder cannot be written (read-only data),
    the user's cache folder (XDG_CACHE_HOME or ~/.cache, then ddpm-course/classifiers), said once in log. Neither
    writable: one line now, before any judge is trained."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(data_dir, "classifiers"), os.path.join(home, "ddpm-course", "classifiers")):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            if folder != os.path.join(data_dir, "classifiers") and log is not None:
                log(f"note: {data_dir}/classifiers cannot be written (read-only data?): the judge is cached in "
                    f"{folder} instead")
            return os.path.join(folder, name)
    raise DataError(f"no folder to cache the judge in: neither {data_dir}/classifiers nor the user's cache folder "
                    "(XDG_CACHE_HOME or ~/.cache) can be written: set XDG_CACHE_HOME to a writable folder")


@torch.no_grad()
def accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    hits = sum((net(x).argmax(1) == y).sum().item() for x, y in zip(images.split(1000), labels.split(1000)))
    return hits / len(labels)


# What the first run of a dataset pays once, said before its judge is trained.
SKIP = "once for this data, then cached; main.py --eval-samples 0 trains without scores and skips it"


def train_classifier(train, test, epochs: int = 2, batch_size: int = 128, min_steps: int = 200, seed: int = 0,
                     log=print) -> tuple:
    """Adam, lr 1e-3, `epochs` epochs (at least min_steps steps) on the training split; returns (net, test accuracy)."""
    torch.manual_seed(seed)
    num_classes = int(train.labels.max()) + 1
    net = FeatureNet(train.images.shape[1], num_classes, dims=train.images.dim() - 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    N = len(train.images)
    steps = max(epochs * -(-N // batch_size), min_steps)
    for _ in Progress(steps, "training the fid classifier", "steps", say=log).wrap(range(steps)):
        idx = torch.randint(0, N, (batch_size,))
        loss = F.cross_entropy(net(train.images[idx]), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval(), accuracy(net.eval(), test.images, test.labels)


class QualityScore:
    """fid, fid_real and class_accuracy for samples of one labelled dataset (see the module docstring)."""

    def __init__(self, dataset: str, data_dir: str, log=print, sample_shape: tuple | None = None,
                 sample_labels: Tensor | None = None, **data_kw):
        """sample_shape (C, H, W) or (C, D, H, W) and sample_labels, if given, are checked against the data before any
        classifier is trained."""
        train = load_dataset(dataset, data_dir, train=True, **data_kw)
        test = load_dataset(dataset, data_dir, train=False, **data_kw)
        if train.labels is None or test.labels is None:
            raise DataError(f"{dataset} has no labels, so no feature classifier for fid can be trained: "
                            "fid needs a labelled dataset (mnist, shapes, a MedMNIST set)")
        if sample_shape is not None and tuple(sample_shape) != tuple(test.images.shape[1:]):
            raise DataError(f"the samples are {tuple(sample_shape)} but {dataset}'s images are "
                            f"{tuple(test.images.shape[1:])}: score them against the dataset they were trained on")
        check_classes(sample_labels, int(train.labels.max()) + 1)
        self.net, self.test_accuracy = self.load_or_train(dataset, data_dir, train, test, log)
        self.shape, self.num_classes = tuple(test.images.shape[1:]), self.net.head.out_features
        self.test_images = test.images
        self.test_features = self.features(test.images)
        self.reference = feature_stats(self.test_features)

    def load_or_train(self, dataset, data_dir, train, test, log) -> tuple:
        path = cache_path(data_dir, f"{dataset}-{fingerprint(train)}.pt", log)
        self.cache = Path(path)
        if os.path.isfile(path):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net = FeatureNet(train.images.shape[1], state["num_classes"], dims=train.images.dim() - 2)
                net.load_state_dict(state["weights"])
                return net.eval(), state["test_accuracy"]
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                log(f"{path} is not a usable classifier ({type(e).__name__}): training it again")
        log(f"training the {dataset} feature classifier for fid ({SKIP}; as {path})")
        net, acc = train_classifier(train, test, log=log)
        log(f"{dataset} classifier: test accuracy {acc:.4f}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {"weights": net.state_dict(), "num_classes": net.head.out_features, "test_accuracy": acc}
        save_atomic(lambda p: save_tensors(state, p), path)
        return net, acc

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        return torch.cat([self.net.features(x) for x in images.float().split(1000)])

    def __call__(self, samples: Tensor, labels: Tensor | None = None, masks: Tensor | None = None) -> dict:
        """samples: (N, C, H, W) in about [-1, 1] (clipped to it first), N >= 2; labels (N,) or None."""
        if tuple(samples.shape[1:]) != self.shape:
            raise DataError(f"samples of shape {tuple(samples.shape[1:])} do not match this dataset's {self.shape}")
        if len(samples) < 2:
            raise DataError("fid needs at least 2 samples")
        check_range(samples)
        check_classes(labels, self.num_classes)
        x = samples.float().cpu().clamp(-1, 1)  # round-off only: check_range allows RANGE_SLACK
        real = self.test_features[torch.randperm(len(self.test_features), generator=torch.Generator().manual_seed(0))
                                  [:len(x)]]
        result = {"fid": round(frechet_distance(*feature_stats(self.features(x)), *self.reference), 2),
                  "fid_real": round(frechet_distance(*feature_stats(real), *self.reference), 2)}
        if not all(np.isfinite(v) for v in result.values()):
            raise DataError(f"fid came out as {result['fid']} (fid_real {result['fid_real']}): not a number; the "
                            "samples or the classifier are damaged")
        if labels is not None:
            with torch.no_grad():
                predicted = torch.cat([self.net(b).argmax(1) for b in x.split(1000)])
            result["class_accuracy"] = round((predicted == labels.cpu()).float().mean().item(), 4)
        return result


RANGE_SLACK = 1e-3  # float round-off tolerated beyond [-1, 1]


def check_range(samples: Tensor) -> None:
    """Samples must be finite and in [-1, 1] (as sample.py writes them), never silently clipped."""
    if not torch.isfinite(samples).all():
        raise DataError("the samples hold NaN or inf: they cannot be scored")
    lo, hi = samples.min().item(), samples.max().item()
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        hint = ": images in 0..255 map to [-1, 1] as x / 127.5 - 1" if hi > 1.5 else ""
        raise DataError(f"the samples lie in {lo:.4g}..{hi:.4g}, but metrics.py expects [-1, 1]{hint}")


def check_classes(labels: Tensor | None, num_classes: int) -> None:
    """Labels of class-conditional samples must name classes the dataset has."""
    if labels is not None and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise DataError(f"the labels lie in {int(labels.min())}..{int(labels.max())}, but this dataset's classes "
                        f"are 0..{num_classes - 1}")


def dice(pred: Tensor, target: Tensor) -> Tensor:
    """Dice overlap 2|A and B| / (|A| + |B|) per sample of two binary (N, 1, H, W) masks (or volumes
    (N, 1, D, H, W)); 1 when both are empty."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter, total = (pred * target).sum(1), pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def lesion_dice(x: Tensor, masks: Tensor, threshold: float = 0.8) -> float:
    """Mask adherence for phantom samples x (N, 1, H, W) or (N, 1, D, H, W) in [-1, 1]: mean Dice between the
    condition masks and the pixels brighter than threshold in [0, 1] (only the lesion is)."""
    return dice(unnormalize_to_zero_to_one(x) > threshold, masks > 0.5).mean().item()


def lesion_recall(x: Tensor, masks: Tensor, threshold: float = 0.8) -> float:
    """The share of the masks' pixels that the samples draw brighter than threshold, over all samples: is the
    lesion where the mask says? (Dice also counts bright pixels elsewhere, such as grain on the skull.)"""
    inside = masks > 0.5
    return ((unnormalize_to_zero_to_one(x) > threshold) & inside).sum().item() / max(inside.sum().item(), 1)


def lesion_scores(x: Tensor, masks: Tensor) -> dict:
    """dice and lesion_recall of phantom samples against their own condition masks, and against the masks
    shuffled (each sample against the next one's: chance level)."""
    shuffled = masks.roll(1, dims=0)
    return {"dice": round(lesion_dice(x, masks), 4), "dice_shuffled_masks": round(lesion_dice(x, shuffled), 4),
            "lesion_recall": round(lesion_recall(x, masks), 4),
            "lesion_recall_shuffled_masks": round(lesion_recall(x, shuffled), 4)}


# --- the segmenter judge for mask-conditioned samples --------------------------------------------

def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.GELU())


class SegNet(nn.Module):
    """A plain 3-level U-Net segmenter (Ronneberger et al. 2015, arXiv:1505.04597) in miniature:
    images (B, C, H, W) in [-1, 1], H and W divisible by 4 -> lesion logits (B, 1, H, W).
    features() is the deepest level averaged over positions (4 * width values), for the fid."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        c = width
        self.enc1, self.enc2, self.enc3 = conv_block(in_channels, c), conv_block(c, 2 * c), conv_block(2 * c, 4 * c)
        self.dec2, self.dec1 = conv_block(6 * c, 2 * c), conv_block(3 * c, c)
        self.head = nn.Conv2d(c, 1, 1)

    def encode(self, x: Tensor) -> tuple:
        e1 = self.enc1(x)                                        # (B, c, H, W)
        e2 = self.enc2(F.max_pool2d(e1, 2))                      # (B, 2c, H/2, W/2)
        return e1, e2, self.enc3(F.max_pool2d(e2, 2))            # (B, 4c, H/4, W/4)

    def features(self, x: Tensor) -> Tensor:
        return self.encode(x)[2].mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        e1, e2, e3 = self.encode(x)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2), e2], 1))
        return self.head(self.dec1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1)))


def soft_dice_bce(logits: Tensor, target: Tensor) -> Tensor:
    """BCE plus 1 - soft Dice (Milletari et al. 2016), the usual loss for small lesions."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    soft = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - soft).mean()


def train_segmenter(images: Tensor, masks: Tensor, steps: int = 1500, batch_size: int = 16, seed: int = 0,
                    log=print, extra: tuple | None = None) -> SegNet:
    """Adam 1e-3 for `steps` steps of soft_dice_bce on random batches, each augmented (data.augment).
    extra: (images, masks) of more pairs (e.g. synthetic ones); then half of every batch comes from them."""
    torch.manual_seed(seed)
    net = SegNet(images.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in Progress(steps, "training the segmenter", "steps", show=log is not None, say=log).wrap(range(steps)):
        idx = torch.randint(0, len(images), (batch_size if extra is None else batch_size // 2,))
        x, m = images[idx], masks[idx]
        if extra is not None:
            more = torch.randint(0, len(extra[0]), (batch_size - len(idx),))
            x, m = torch.cat([x, extra[0][more]]), torch.cat([m, extra[1][more]])
        x, m = augment(x, m)
        loss = soft_dice_bce(net(x), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def segment(net: SegNet, images: Tensor) -> Tensor:
    """Binary masks (N, 1, H, W): the segmenter's logits above 0."""
    return torch.cat([(net(x.float()) > 0).float() for x in images.split(64)])


def critic_accuracy(real: Tensor, samples: Tensor, steps: int = 400, batch_size: int = 32, seed: int = 0) -> float:
    """How well a small critic (FeatureNet, trained from scratch) tells real images from samples: trained on half
    of each (flipped and shifted, data.augment, so that it cannot just remember them), tested on the other halves,
    then the halves swapped; the mean test accuracy. 0.5: it cannot tell them apart; 1.0: it always can."""
    n = min(len(real), len(samples)) // 2
    if n < 4:
        raise DataError("the critic needs at least 8 samples and 8 real images")
    accuracies = []
    for train, test in ((slice(0, n), slice(n, 2 * n)), (slice(n, 2 * n), slice(0, n))):
        torch.manual_seed(seed)
        x = torch.cat([real[train], samples[train]]).float()
        y = torch.cat([torch.ones(n), torch.zeros(n)]).long()
        net = FeatureNet(x.shape[1], 2, dims=x.dim() - 2)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch_size,))
            loss = F.cross_entropy(net(augment(x[idx])[0]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        accuracies.append(accuracy(net.eval(), torch.cat([real[test], samples[test]]).float(), y))
    return sum(accuracies) / 2


class MaskScore:
    """mask_dice, mask_dice_real, fid and fid_real for samples of a folder dataset with masks (see the
    module docstring); the segmenter is cached in DATA_DIR/classifiers/, keyed by the training data. critic: also
    critic_accuracy against the held-out slices (0.5: a critic cannot tell the samples from them) and critic_real,
    the same for real training slices (the floor: other patients)."""

    def __init__(self, data_dir: str, image_size: int, channels: int | None = None, log=print,
                 sample_shape: tuple | None = None, steps: int | None = None, critic: bool = False):
        train = load_dataset("folder", data_dir, train=True, image_size=image_size, channels=channels)
        held = load_dataset("folder", data_dir, train=False, image_size=image_size, channels=channels)
        if train.masks is None:
            raise DataError(f"{data_dir} has no masks/ folder, so no segmenter can be trained: mask_dice needs masks")
        if sample_shape is not None and tuple(sample_shape) != tuple(held.images.shape[1:]):
            raise DataError(f"the samples are {tuple(sample_shape)} (C, H, W) but {data_dir}'s images at "
                            f"--image-size {image_size} are {tuple(held.images.shape[1:])}")
        if image_size % 4:
            raise DataError(f"the segmenter needs an image side divisible by 4, got {image_size}")
        self.net = self.load_or_train(data_dir, train, steps or SEGMENTER_STEPS, log)
        self.held, self.critic = held, critic
        self.train = train.images  # critic_real: the first of them in a fixed random order
        self.order = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))
        self.reference = feature_stats(self.features(train.images))
        self.held_features = self.features(held.images)
        self.real_dice = dice(segment(self.net, held.images), held.masks).mean().item()

    def load_or_train(self, data_dir, train, steps, log) -> SegNet:
        key = fingerprint(train)
        path = cache_path(data_dir, f"segmenter-{train.images.shape[-1]}px-{steps}-{key}.pt", log)
        if os.path.isfile(path):
            try:
                net = SegNet(train.images.shape[1])
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return net.eval()
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                log(f"{path} is not a usable segmenter ({type(e).__name__}): training it again")
        if log is not None:
            log(f"training the segmenter for mask_dice and fid ({steps} steps, {SKIP}; as {path})")
        net = train_segmenter(train.images, train.masks, steps, log=log)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_atomic(lambda p: save_tensors(net.state_dict(), p), path)
        return net

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        return torch.cat([self.net.features(x.float()) for x in images.split(64)])

    def __call__(self, samples: Tensor, labels: Tensor | None = None, masks: Tensor | None = None) -> dict:
        """samples (N, C, H, W) in [-1, 1]; masks (N, 1, H, W), the conditions they were drawn with, or
        None (unconditional samples: fid only). fid uses the first min(N, held-out) samples."""
        check_range(samples)
        if len(samples) < 2:
            raise DataError("fid needs at least 2 samples")
        x = samples.float().cpu().clamp(-1, 1)
        n = min(len(x), len(self.held_features))
        result = {"fid": round(frechet_distance(*feature_stats(self.features(x[:n])), *self.reference), 2),
                  "fid_real": round(frechet_distance(*feature_stats(self.held_features[:n]), *self.reference), 2)}
        if masks is not None:
            if masks.shape != (len(x), 1, *x.shape[2:]):
                raise DataError(f"masks {tuple(masks.shape)} do not match the samples {tuple(x.shape)}")
            result["mask_dice"] = round(dice(segment(self.net, x), masks.cpu() > 0.5).mean().item(), 4)
            result["mask_dice_real"] = round(self.real_dice, 4)
        if self.critic:
            result["critic_accuracy"] = round(critic_accuracy(self.held.images, x), 4)
            result["critic_real"] = round(critic_accuracy(self.held.images, self.train[self.order[:len(x)]]), 4)
        if not all(np.isfinite(v) for v in result.values()):
            raise DataError(f"the scores came out as {result}: not numbers; the samples or the segmenter are damaged")
        return result


def judge_for(config: dict, with_masks: bool):
    """The per-epoch score of a run's samples: fid by a classifier for labelled data, by a segmenter for data with
    masks (with_masks); None (the grid only) for data without a judge, said in one line."""
    kind = dataset_info(config["dataset"]).judge
    if kind == "classifier":
        size = config["image_size"] if dataset_info(config["dataset"]).size is not None else None  # resizable data
        return QualityScore(config["dataset"], config["data_dir"], image_size=size)
    if kind == "segmenter" and with_masks:
        return MaskScore(config["data_dir"], config["image_size"], channels=config.get("channels"))
    print(f"no fid for {config['dataset']}: metrics.py scores datasets with a judge in data.DATASETS (labelled ones "
          "with a test split, folders with masks)")
    return None


def read_samples(path: str) -> tuple:
    """images (N, C, H, W) float in [-1, 1], labels (N,) or None and masks (N, 1, H, W) in {0, 1} or
    None, from sample.py's .npz."""
    if not os.path.isfile(path):
        raise DataError(f"no samples file at {path} (no such file, or not a regular file): write one with sample.py")
    arrays = read_npz(path)
    if "images" not in arrays:
        raise DataError(f"{path} has no 'images' array: write it with sample.py")
    images, labels = arrays["images"], arrays.get("labels")
    if images.ndim not in (4, 5) or not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all():
        raise DataError(f"{path}: 'images' must be finite floats (N, C, H, W) or volumes (N, C, D, H, W), got "
                        f"{images.dtype} {images.shape}")
    if len(images) == 0 or not all(4 <= side <= 512 for side in images.shape[2:]) or not 1 <= images.shape[1] <= 3:
        raise DataError(f"{path}: 'images' {images.shape} must hold at least one image of 1 to 3 channels and sides "
                        "in 4..512, as sample.py draws them")
    if labels is not None and (labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: 'labels' must be N integers, got {labels.dtype} {labels.shape}")
    masks = arrays.get("masks")
    if masks is not None and (masks.shape != (len(images), 1, *images.shape[2:]) or not np.isin(masks, (0, 1)).all()):
        raise DataError(f"{path}: 'masks' must be (N, 1, ...) of 0 and 1 like the images {images.shape}, got "
                        f"{masks.dtype} {masks.shape}")
    return (torch.from_numpy(images), None if labels is None else torch.from_numpy(labels.astype(np.int64)),
            None if masks is None else torch.from_numpy(masks.astype(np.float32)))


def phantom_scores(images: Tensor, masks: Tensor | None, name: str) -> dict:
    """lesion_scores of mask-conditioned samples of a phantom, after checking that they are."""
    if masks is None:
        raise DataError(f"the samples have no 'masks' array: {name}'s Dice needs samples drawn for masks "
                        "(sample.py with a COND --cond mask model)")
    volumes = name.startswith("phantom3d")
    if (images.dim() == 5) != volumes:
        raise DataError(f"the samples are {'volumes' if images.dim() == 5 else 'images'} but {name} holds "
                        f"{'volumes' if volumes else 'images'}: pass the --dataset they were drawn for")
    if len(images) < 2:
        raise DataError("the Dice beside shuffled masks needs at least 2 samples")
    return lesion_scores(images, masks)


def main(argv=None) -> None:
    p = Parser(prog="metrics.py", description="fid, fid_real (and class_accuracy) of samples in the features of a "
               "small classifier trained on the dataset.")
    p.add_argument("samples", help="a .npz written by sample.py (images in [-1, 1], optional labels)")
    p.add_argument("--dataset", help="mnist, shapes, a MedMNIST 2D or 3D name, folder (images/ and masks/ in "
                   "--data-dir: the segmenter judge), or phantom/phantom3d (mask Dice by threshold) (default: the "
                   "one the samples' model trained on, which sample.py records in the .npz)")
    p.add_argument("--data-dir", help="where the dataset is read from (default: the model's, as recorded, else ./data)")
    p.add_argument("--image-size", type=int, help="folder: the side the real images are resized to (default: the "
                   "samples')")
    args = p.parse_args(argv)
    if args.image_size is not None and not 4 <= args.image_size <= 512:  # main.py's bounds
        p.error(f"--image-size must lie in 4..512, got {args.image_size}")
    run_script(p, score_file, args, memory="score fewer samples (a smaller .npz) or pass a smaller --image-size")


def score_file(args) -> None:
    images, labels, masks = read_samples(args.samples)
    recorded = {k: str(v) for k, v in read_npz(args.samples).items() if k in ("dataset", "data_dir") and v.ndim == 0}
    dataset = args.dataset or recorded.get("dataset")
    data_dir = args.data_dir or recorded.get("data_dir", "./data")
    if dataset is None:
        raise DataError(f"{args.samples} does not say which data its model trained on: pass --dataset NAME "
                        "(and --data-dir DIR)")
    dataset_info(dataset)  # an unknown name: one line listing the known ones
    check_range(images)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if dataset_info(dataset).lesion == "bright":
        result = phantom_scores(images, masks, dataset)
    elif dataset == "folder":
        score = MaskScore(data_dir, args.image_size or images.shape[-1], log=log, sample_shape=images.shape[1:],
                          critic=True)
        result = score(images, masks=masks)
    else:
        score = QualityScore(dataset, data_dir, log=log, sample_shape=tuple(images.shape[1:]), sample_labels=labels)
        result = score(images, labels)
    print(" ".join(f"{k}={v}" for k, v in {"n": len(images), **result}.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
