"""What every script needs to rebuild a trained model: the model from a config, checkpoints
that load safely (tensors and plain containers only, never code), and the EMA of the weights.

A checkpoint (model.pth) is a dict: model (the network's state dict), ema (the averaged
weights and their update count, or None), optimizer, epoch, config (everything needed to
rebuild the model, see build_model), losses and metrics. main.py writes it; main.py --resume
and sample.py read it with load_checkpoint.
"""
import copy
import os

import torch

from cond import ConditionalDDPM
from ddgm import DDGM
from ddpm import DDPM, SAMPLERS, SCHEDULES
from errors import DataError, cause
from settings import checkpoint_problem
from unet import NETWORKS

# Settings that shape the network or the process: a checkpoint resumes only with the same ones.
ARCHITECTURE = ("model", "net", "unet_widths", "attention_res", "n_T", "betas", "schedule", "theta0", "loss", "cond",
                "dataset", "in_channels", "image_size", "num_classes", "cond_channels", "dims")

def build_model(config: dict) -> DDPM:
    """Network and diffusion process from a config (main.make_config's, or a checkpoint's)."""
    net = NETWORKS[config["net"]](config)
    beta = SCHEDULES[config["schedule"]](config["n_T"], tuple(config["betas"]))
    clip_x0 = config.get("clip_x0", False)
    if config["model"] == "DDGM":
        return DDGM(net, beta, theta_0=config["theta0"], loss_type=config["loss"], clip_x0=clip_x0)
    gamma = config.get("min_snr", 0.0)
    if config["model"] == "COND":
        return ConditionalDDPM(net, beta, config["num_classes"], config["p_uncond"], config["guidance"],
                               clip_x0=clip_x0, min_snr_gamma=gamma)
    return DDPM(net, beta, clip_x0=clip_x0, min_snr_gamma=gamma)


class EMA:
    """Exponential moving average of the network weights, used for every sample drawn (Ho et al.
    App. B: decay 0.9999). Warm-up as in TensorFlow's tf.train.ExponentialMovingAverage with
    num_updates: decay_n = min(decay, (1 + n) / (10 + n)), so early in a run the average follows
    the weights closely instead of remembering the random initialisation."""

    def __init__(self, model: DDPM, decay: float):
        self.decay, self.n = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False).eval()  # the whole process, averaged network

    @torch.no_grad()
    def update(self, model: DDPM) -> None:
        """theta_ema <- decay_n theta_ema + (1 - decay_n) theta, after an optimiser step."""
        decay_n = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        ema, raw = list(self.model.eps_model.parameters()), list(model.eps_model.parameters())
        torch._foreach_lerp_(ema, raw, 1 - decay_n)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n": self.n, "weights": self.model.eps_model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]
        self.model.eps_model.load_state_dict(state["weights"])


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by main.py, loaded with weights_only=True and checked like the command
    line (settings.py) before anything is built: a file that is not one, would run code when
    unpickled, or holds an edited config or damaged weights raises DataError with one line."""
    if not os.path.isfile(path):
        raise DataError(f"no checkpoint at {path}: train one with main.py first, or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path} is not a checkpoint this project can load safely ({cause(e)})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "config" not in ckpt:
        raise DataError(f"{path} is not a main.py checkpoint (no model weights or config in it)")
    problem = checkpoint_problem(ckpt["config"], path)
    if problem:
        raise DataError(problem)
    epoch, ema = ckpt.get("epoch", 0), ckpt.get("ema")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 100_000:
        raise DataError(f"{path}: its epoch {epoch!r} is not a whole number in 0..100000: the checkpoint was edited")
    if ema is not None and not (isinstance(ema, dict) and isinstance(ema.get("n"), int) and "weights" in ema):
        raise DataError(f"{path}: its EMA entry has no weights and update count: the checkpoint was edited or "
                        "damaged; sample with --no-ema, or retrain")
    losses, metrics = ckpt.get("losses", []), ckpt.get("metrics", [])
    if not (isinstance(losses, list) and all(isinstance(r, (list, tuple)) and len(r) == 3 for r in losses)
            and isinstance(metrics, list) and all(isinstance(m, dict) for m in metrics)):
        raise DataError(f"{path}: its losses or metrics are not the lists main.py writes: the checkpoint was edited")
    check_weights(ckpt["model"], path, "weights")
    if ema is not None:
        check_weights(ema["weights"], path, "EMA weights")
    return ckpt


def check_weights(weights, path: str, what: str) -> None:
    """A state dict of finite tensors, or DataError."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise DataError(f"{path}: its {what} are not a dict of named tensors: the checkpoint was edited or damaged")
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise DataError(f"{path}: its {what} hold NaN or inf (e.g. {bad}): that run diverged; use an earlier "
                        "checkpoint or retrain with a lower --lr")


def load_weights(net: torch.nn.Module, weights: dict, where: str) -> None:
    """load_state_dict, with a mismatch told in one line: "N tensors differ, e.g. `name` (16, 1, 3, 3) vs ..."."""
    expected = net.state_dict()
    differ = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if differ or missing or extra:
        k = (differ or missing or extra)[0]
        example = f"`{k}` {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" if differ else \
            f"`{k}` {'missing' if missing else 'not in this network'}"
        raise DataError(f"{where}: {len(differ) + len(missing) + len(extra)} tensors differ from the network its "
                        f"config describes, e.g. {example}")
    net.load_state_dict(weights)


def model_from_checkpoint(ckpt: dict, device: torch.device, use_ema: bool = True, path: str = "the checkpoint") -> DDPM:
    """The model a checkpoint describes, in eval mode, with its EMA weights when present and use_ema."""
    model = build_model(ckpt["config"])
    weights = ckpt["ema"]["weights"] if use_ema and ckpt.get("ema") else ckpt["model"]
    load_weights(model.eps_model, weights, path)
    return model.to(device).eval()


def pick_device(name: str) -> torch.device:
    """auto: cuda if available, else cpu; or a named device that must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda but no CUDA GPU is available: use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"--device {name}: only cpu and cuda are supported")
    return device


def sample_shape(config: dict) -> tuple:
    """(C, H, W) of one sample of a run, or (C, D, H, W) for a run on volumes (config["dims"] 3)."""
    return (config["in_channels"], *[config["image_size"]] * config.get("dims", 2))


@torch.no_grad()
def draw(model: DDPM, n: int, shape: tuple, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
         generator=None, progress: bool = False, record=(), kept: list | None = None, **cond) -> torch.Tensor:
    """n samples (n, C, H, W) in about [-1, 1] by a sampler of ddpm.SAMPLERS (ddim: `steps` steps with eta;
    ddpm: Algorithm 2, all T steps). record, kept: the reverse process at those indices, appended to kept."""
    model.eval()
    recording = {"record": record, "kept": kept} if record else {}
    return SAMPLERS[sampler](model, n, shape, steps=steps, eta=eta, generator=generator, progress=progress,
                             **recording, **cond)
