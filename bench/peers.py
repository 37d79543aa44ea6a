"""Other projects' U-Nets at our default net's size, and the race to a fid, for bench.py.

The peers are optional (not in requirements.txt): `pip install diffusers denoising_diffusion_pytorch monai einops`.
Each has about 150k parameters, three resolutions, one residual block each and attention at the
middle one, like our default U-Net (16 32 32). time_to_fid() trains every network with main.py's
recipe at its batch (32) on the same MNIST images and scores its samples every few thousand images.
"""
import time

import torch

from bench.step import train_step
from models import RECIPE, by_size
from plumbing.run import native_bf16


class Peer(torch.nn.Module):
    """A peer U-Net wrapped to our call net(x_t, t) -> eps."""

    def __init__(self, net, kind: str):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x_t, t, **cond):
        out = self.net(x_t, t)
        return out.sample if self.kind == "diffusers" else out


def peers(channels: int) -> dict:
    """{name: network} for every peer installed here."""
    found = {}
    blocks = {"block_out_channels": (12, 24, 24), "layers_per_block": 1, "norm_num_groups": 4}
    try:
        from diffusers import UNet2DModel
        found["diffusers UNet2DModel (12, 24, 24)"] = Peer(UNet2DModel(
            sample_size=28, in_channels=channels, out_channels=channels, **blocks,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")), "diffusers")
    except ImportError:
        pass
    try:
        from denoising_diffusion_pytorch import Unet
        found["denoising_diffusion_pytorch Unet (dim 8)"] = Peer(Unet(dim=8, channels=channels, dim_mults=(1, 2, 2)),
                                                                 "lucidrains")
    except ImportError:
        pass
    try:  # MONAI, the medical imaging toolkit (its generative models, formerly MONAI Generative)
        from monai.networks.nets import DiffusionModelUNet
        found["MONAI DiffusionModelUNet (12, 24, 24)"] = Peer(DiffusionModelUNet(
            spatial_dims=2, in_channels=channels, out_channels=channels, channels=(12, 24, 24),
            attention_levels=(False, True, False), num_res_blocks=1, num_head_channels=24, norm_num_groups=4), "monai")
    except ImportError:
        pass
    return found


def race(name: str, net, x_all, order, score, *, stop_images: int, budget_s: float, every: int, target: float | None,
         precision: str, device, seed: int, recipe: dict | None = None) -> dict:
    """Train net with main.py's default recipe (Algorithm 1 with min-SNR weights, Adam with warm-up, EMA, batch
    32, DDIM samples with eta 1, the cosine schedule of MNIST's default; recipe: changes to it, also "process"
    (models.PROCESSES) and "eta") on x_all
    in `order`, scoring 256 samples (50 steps) of the EMA weights every `every`
    images, until its fid reaches target, stop_images are seen or budget_s of training pass. Returns the trace
    and the time to target."""
    from main import EMA
    from models import PROCESSES, draw
    process = PROCESSES[(recipe or {}).get("model", "DDPM")]
    r = {"model": "DDPM", "eta": 1.0, **RECIPE, **by_size((recipe or {}).get("model", "DDPM"), 28, dims=2, epochs=6),
         "sampler": process.samplers[0], **(recipe or {})}  # main.py's recipe for MNIST, with --sample-eta's 1
    torch.manual_seed(seed)
    model = PROCESSES[r["model"]].from_config(net, r).to(device)
    opt, ema, B = torch.optim.Adam(net.parameters(), lr=r["lr"]), EMA(model, r["ema_decay"]), r["batch_size"]
    used = precision if precision != "auto" else "bf16" if native_bf16(device) else "fp32"
    why = "asked for" if precision != "auto" else "by the hardware"
    trace, seconds, reached, step = [], 0.0, None, 0
    while reached is None and (step + every // B) * B <= stop_images and seconds < budget_s:
        start = time.perf_counter()
        for _ in range(every // B):
            i = step * B % (len(order) - B + 1)
            step += 1
            loss = train_step(model, opt, ema, x0=x_all[order[i:i + B]], step=step, lr=r["lr"], warmup=r["warmup"],
                              precision=used)
        loss = loss.item()  # waits for the queued steps, so that the timer measures them
        seconds += time.perf_counter() - start
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=used == "bf16"):
            samples = draw(ema.model, 256, (1, 28, 28), sampler=r["sampler"], steps=50, eta=r["eta"],
                           generator=torch.Generator(device).manual_seed(seed + 1))
        fid = score(samples.float().cpu())["fid"]
        trace.append({"images": step * B, "train_seconds": round(seconds, 1), "fid": round(fid, 2)})
        print(f"  {name:42s} [{used}] {step * B:6d} images {seconds:6.1f} s: fid {fid:6.1f}", flush=True)
        if target is not None and fid <= target:
            reached = seconds
    return {"precision": used, "precision_why": why, "trace": trace, "seconds_to_target": reached}


def seconds_to(trace: list, target: float) -> float | None:
    """Training seconds at which the fid first reaches target, interpolated linearly between the score before
    (above target) and the one at or below it (None if never)."""
    before = None
    for row in trace:
        if row["fid"] <= target:
            if before is None:  # reached at the first score
                return row["train_seconds"]
            share = (before["fid"] - target) / (before["fid"] - row["fid"])
            return before["train_seconds"] + share * (row["train_seconds"] - before["train_seconds"])
        before = row
    return None


def time_to_fid(nets: dict, ours: str, images: int, data_dir: str, device, *, seed: int = 0, every: int = 10000,
                budget: float = 3.0, precision: str = "auto") -> dict:
    """Our default network first, for `images` images: its last fid is the target. Then every other network
    until it reaches that fid, or has trained budget x our time, or seen budget x images. {name: row}."""
    from data import load_dataset
    from metrics import QualityScore
    train = load_dataset("mnist", data_dir, train=True, download=False)
    score = QualityScore("mnist", data_dir)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(train.images), generator=g)
                       for _ in range(-(-int(images * budget) // len(train.images)))]).to(device)
    x_all = train.images.to(device)
    common = {"every": every, "precision": precision, "device": device, "seed": seed}
    rows = {ours: race(ours, nets[ours], x_all, order=order, score=score, stop_images=images, budget_s=float("inf"),
                       target=None, **common)}
    target, our_s = rows[ours]["trace"][-1]["fid"], rows[ours]["trace"][-1]["train_seconds"]
    rows[ours]["seconds_to_target"] = our_s
    for name, net in nets.items():
        if name != ours:
            rows[name] = race(name, net.to(device), x_all, order=order, score=score, stop_images=int(images * budget),
                              budget_s=budget * our_s, target=target, **common)
    for row in rows.values():
        row["target_fid"] = target
        row["ratio_to_ours"] = row["seconds_to_target"] / our_s if row["seconds_to_target"] else None
        row["seconds_interpolated"] = our_s if row is rows[ours] else seconds_to(row["trace"], target)
        row["ratio_interpolated"] = row["seconds_interpolated"] / our_s if row["seconds_interpolated"] else None
        row["ratio_at_least"] = row["trace"][-1]["train_seconds"] / our_s
    return rows
