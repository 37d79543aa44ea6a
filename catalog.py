"""The names a user can type on the command line (models, datasets) and the training defaults. Plain
constants with no imports, so that `python main.py --help` and argument errors answer at once, before
torch loads; main.py and bench.py read them from here."""

MODELS = ("DDPM", "DDGM", "COND")
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
PHANTOMS = ("phantom", "phantom-healthy", "phantom-anomaly")  # synthetic.make_phantom: bright, no, hidden lesion
DATASETS = ("mnist", "shapes", *PHANTOMS, "folder", "csv", *MEDMNIST_2D)

# The defaults, chosen by measurement on a 2-core CPU (README, "How the defaults were chosen"): digits
# after one MNIST epoch of about 4 minutes. An option given on the command line always wins.
RECIPE = {"net": "unet", "lr": 2e-3, "batch_size": 32, "warmup": 100,
          "ema_decay": 0.999, "min_snr": 5.0, "sampler": "ddim"}
# The U-Net grows with the image (unet.UNet: n widths, n - 1 levels): --unet-widths, when not given, is
# the entry for the smallest listed side at or above the image side (measured in docs/medical.md).
UNET_WIDTHS_BY_SIZE = {32: (16, 32, 32), 64: (16, 32, 64, 64), 512: (16, 32, 64, 128, 128)}
# Image sides when --image-size is not given: folder and phantom images are resized to 64, the rest are 28x28.
RESIZED = ("folder", *PHANTOMS)


def default_image_size(dataset: str) -> int:
    return 64 if dataset in RESIZED else 28


def unet_widths_for(image_size: int) -> tuple:
    return next(w for side, w in UNET_WIDTHS_BY_SIZE.items() if image_size <= side)


# --paper-settings: Ho et al. 2020 Sec. 4 and App. B (Adam 2e-4, batch 128, 5000 warm-up steps, EMA 0.9999,
# Algorithm 2 with T = 1000 steps). Their 35.7M-parameter network is out of reach on a CPU: the net stays ours.
PAPER = {"lr": 2e-4, "min_snr": 0.0, "batch_size": 128, "warmup": 5000,
         "ema_decay": 0.9999, "sampler": "ddpm"}

