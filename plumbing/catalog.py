"""The names a user can type on the command line and the training defaults, without importing torch,
so that `python main.py --help` and argument errors answer at once.

Processes, schedules, networks, samplers and datasets are registered where they are implemented
(models.PROCESSES, ddpm.SCHEDULES, ddpm.SAMPLERS, unet.NETWORKS, data.DATASETS: a dict from the name to the
class or function). known() reads
the names of a registry from the imported module when it is loaded (it may have gained entries at
run time), else from the module's source text, so there is no second list of names to keep in step."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the registries' modules

PRECISIONS = ("auto", "fp32", "bf16")  # --precision (speed.py)
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
MEDMNIST_3D = ("organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d",
               "synapsemnist3d")  # volumes (N, 28, 28, 28)
REGISTRIES = {"process": ("models", "PROCESSES"), "schedule": ("ddpm", "SCHEDULES"),
              "sampler": ("ddpm", "SAMPLERS"), "net": ("unet", "NETWORKS"),
              "dataset": ("data", "DATASETS")}


def registered(module: str, registry: str) -> tuple:
    """The string keys of `REGISTRY = {...}` at the top level of module.py, read from its source."""
    with open(os.path.join(ROOT, module + ".py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == registry for t in targets) and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    raise LookupError(f"{module}.py has no top-level {registry} = {{...}}")


def known(key: str) -> tuple:
    """The names a setting (schedule, sampler, net, dataset) may take; datasets include the MedMNIST names."""
    module, registry = REGISTRIES[key]
    loaded = sys.modules.get(module)
    names = tuple(getattr(loaded, registry)) if loaded is not None else registered(module, registry)
    return (*names, *MEDMNIST_2D, *MEDMNIST_3D) if key == "dataset" else names


# The defaults, chosen by measurement on a 2-core CPU (README, "How the defaults were chosen"): digits
# after one MNIST epoch of about 4 minutes. An option given on the command line always wins.
RECIPE = {"net": "unet", "lr": 2e-3, "batch_size": 32, "warmup": 100,
          "ema_decay": 0.999, "min_snr": 5.0, "sampler": "ddim"}
# The U-Net grows with the image (unet.UNet: n widths, n - 1 levels): --unet-widths, when not given, is
# the entry for the smallest listed side at or above the image side (measured in docs/medical.md).
UNET_WIDTHS_BY_SIZE = {32: (16, 32, 32), 64: (16, 32, 64, 64), 512: (16, 32, 64, 128, 128)}
UNET_VERSION = 2  # the latest design of unet.VERSIONS


def unet_version_for(image_size: int, dims: int = 2) -> int:
    """The U-Net design a new run trains (a resumed run keeps its own): the latest where it was measured better
    (images up to 64 px: MNIST at 28, docs/quality.md; brain MRI at 64, docs/medical.md); the first above and on
    volumes, where it was not measured or measured worse (phantom3d anomaly maps: voxel AUROC 0.585 against
    0.968, docs/volumes.md)."""
    return UNET_VERSION if dims == 2 and image_size <= 64 else 1


# The beta schedule of a new run that names none: Nichol & Dhariwal's cosine (their eq. 17) for 2D images up to
# 32 px, where Ho et al.'s linear one leaves the last few hundred steps as almost pure noise (their Sec. 3.2):
# the first MNIST epoch of `python main.py DDPM` scored fid 25.45 and 24.97 against 29.29 and 28.53 on two seeds,
# COND 35.0 against 38.27 (docs/quality.md). VPRED gained nothing (32.03 against 32.2) and keeps the linear
# schedule, as do larger images and volumes (measured with it), DDGM (Nachmani et al.'s Gamma noise is defined
# on it) and --betas, whose ends only the linear one uses.
COSINE_UP_TO = 32
COSINE_PROCESSES = ("DDPM", "COND")


def schedule_for(model: str, image_size: int, dims: int = 2) -> str:
    return "cosine" if model in COSINE_PROCESSES and dims == 2 and image_size <= COSINE_UP_TO else "linear"


# Volumes: a 3D convolution costs a side's worth more per output than a 2D one, so the 3D U-Net starts
# narrower and goes one level deeper (32^3 -> 4^3), and trains on fewer volumes per step. Measured on
# 2 CPU cores (docs/volumes.md): 0.6 s per bf16 step of 8 volumes of 32^3 with these widths, 0.8 s with 16 32 32.
UNET_WIDTHS_3D = (8, 16, 32, 32)
VOLUME_BATCH = 8


def unet_widths_for(image_size: int, dims: int = 2) -> tuple:
    return UNET_WIDTHS_3D if dims == 3 else next(w for side, w in UNET_WIDTHS_BY_SIZE.items() if image_size <= side)


# --paper-settings: Ho et al. 2020 Sec. 4 and App. B (Adam 2e-4, batch 128, 5000 warm-up steps, EMA 0.9999,
# Algorithm 2 with T = 1000 steps). Their 35.7M-parameter network is out of reach on a CPU: the net stays ours.
PAPER = {"lr": 2e-4, "min_snr": 0.0, "batch_size": 128, "warmup": 5000,
         "ema_decay": 0.9999, "sampler": "ddpm", "schedule": "linear"}

