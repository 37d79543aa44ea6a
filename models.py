"""What every script needs to rebuild a trained model: the registry of diffusion processes, the
model from a config, the EMA of the weights, and drawing samples by a sampler's name.

A checkpoint (model.pth) is a dict: model (the network's state dict), ema (the averaged
weights and their update count, or None), optimizer, epoch, config (everything needed to
rebuild the model, see build_model), losses and metrics. main.py writes it; main.py --resume,
sample.py and anomaly.py read it safely with plumbing.checkpoints.load_checkpoint.
"""
import copy

import torch

from cond import ConditionalDDPM
from ddgm import DDGM
from ddpm import DDPM, SAMPLERS, SCHEDULES
from flow import FlowMatching
from plumbing.checkpoints import load_weights
from plumbing.errors import DataError
from plumbing.progress import Progress
from unet import NETWORKS
from vpred import VPredictionDDPM

# Processes by name (the MODEL of `python main.py MODEL`): a subclass of DDPM whose class attributes
# say what it supports (samplers, conditions, options; see DDPM). A new one is a file and a line here.
PROCESSES = {"DDPM": DDPM, "DDGM": DDGM, "COND": ConditionalDDPM, "VPRED": VPredictionDDPM, "FLOW": FlowMatching}


def process_problems(config: dict) -> list:
    """[(setting, what is wrong)] where a run's settings ask of its process what it does not support."""
    process = PROCESSES[config["model"]]
    found = []
    if "sampler" in config and not can_draw(process, config["sampler"]):
        found.append(("sampler", f"must be {' or '.join(process.samplers)} for {config['model']} (its samplers)"))
    if config.get("cond") is not None and config["cond"] not in process.conditions:
        takers = [n for n, p in PROCESSES.items() if config["cond"] in p.conditions]
        found.append(("cond", f"{config['cond']} applies to {listed(takers)} only, not {config['model']}"))
    if config.get("min_snr") and "min_snr" not in process.options:
        takers = [n for n, p in PROCESSES.items() if "min_snr" in p.options]
        found.append(("min_snr", f"applies to {listed(takers)}, not {config['model']}"))
    return found


def listed(names: list) -> str:
    """"A", "A and B", "A, B and C"."""
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "none"


def can_draw(process, sampler: str) -> bool:
    """The registry's fact: whether the process (a class or a model) can draw with this sampler."""
    return process.samplers is None or sampler in process.samplers


def default_sampler(model_name: str, wanted: str) -> str:
    """wanted (the recipe's sampler) where the process supports it, else its first sampler."""
    process = PROCESSES[model_name]
    return wanted if can_draw(process, wanted) else process.samplers[0]


def build_model(config: dict) -> DDPM:
    """Network and diffusion process from a config (main.py's, or a checkpoint's)."""
    return build_process(NETWORKS[config["net"]](config), config)


def build_process(eps_model: torch.nn.Module, config: dict) -> DDPM:
    """The process of config["model"] around eps_model, on config's beta schedule. A process that cannot be
    built from these settings (e.g. DDGM's Gamma noise for some theta_0 and T) is one line (DataError)."""
    beta = SCHEDULES[config["schedule"]](config["n_T"], tuple(config["betas"]))
    try:
        return PROCESSES[config["model"]].from_config(eps_model, beta, config)
    except ValueError as e:  # the process's own check of its settings: bad input, told in one line
        raise DataError(str(e)) from e


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


def model_from_checkpoint(ckpt: dict, device: torch.device, use_ema: bool = True, path: str = "the checkpoint") -> DDPM:
    """The model a checkpoint describes, in eval mode, with its EMA weights when present and use_ema."""
    model = build_model(ckpt["config"])
    weights = ckpt["ema"]["weights"] if use_ema and ckpt.get("ema") else ckpt["model"]
    load_weights(model.eps_model, weights, path)
    return model.to(device).eval()


def sample_shape(config: dict) -> tuple:
    """(C, H, W) of one sample of a run, or (C, D, H, W) for a run on volumes (config["dims"] 3)."""
    return (config["in_channels"], *[config["image_size"]] * config.get("dims", 2))


def check_sampler(model: DDPM, sampler: str) -> None:
    """One line if the process cannot draw with this sampler (DDGM: no DDIM), or the name is unknown."""
    if sampler not in SAMPLERS:
        raise DataError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)} (ddpm.SAMPLERS)")
    if not can_draw(model, sampler):
        raise DataError(f"{type(model).__name__} samples with {' or '.join(model.samplers)} only, not {sampler}: "
                        f"use --sampler {model.samplers[0]}")


@torch.no_grad()
def draw(model: DDPM, n: int, shape: tuple, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
         generator=None, x_start: torch.Tensor | None = None, t_start: int | None = None, on_step=None,
         progress: bool = False, **cond) -> torch.Tensor:
    """n samples (n, C, H, W) in about [-1, 1] by a sampler of ddpm.SAMPLERS, called by its contract
    (ddpm.py). progress: a bar over the timesteps the sampler visits, driven by on_step."""
    check_sampler(model, sampler)
    model.eval()
    if progress:
        top = model.T - 1 if t_start is None else t_start
        bar, then = Progress(None, top + 1, f"sampling ({sampler})", "steps"), on_step

        def on_step(i, x_t, x0_hat):
            bar.at(top + 1 - i)
            if then is not None:
                then(i, x_t, x0_hat)
    x = SAMPLERS[sampler](model, n, shape, steps=steps, eta=eta, generator=generator, x_start=x_start,
                          t_start=t_start, on_step=on_step, **cond)
    if progress:
        bar.close()
    return x
