"""The names a user can type on the command line: models and datasets. Plain constants with no
imports, so that `python main.py --help` and argument errors answer at once, before torch loads."""

MODELS = ("DDPM", "DDGM", "COND")
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
               "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
PHANTOMS = ("phantom", "phantom-healthy", "phantom-anomaly")  # synthetic.make_phantom: bright, no, hidden lesion
DATASETS = ("mnist", "shapes", *PHANTOMS, "folder", "csv", *MEDMNIST_2D)
