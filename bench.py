"""How fast the networks train and sample on this machine: python bench.py [--quick] [--quality].

Prints a table and writes bench.json, all measured in this one run: the machine's matmul
throughput (fp32, bf16), and per network at batch 128: training images/s (median over steps
after warm-up; Algorithm 1 with Adam, as main.py trains), FLOPs per training image
(torch.utils.flop_counter), the achieved GFLOP/s as a fraction of the matmul throughput, ms per
sampling step for 64 images and the per-epoch grid's sampling time with the default sampler.
When diffusers or denoising_diffusion_pytorch are installed, their U-Nets of about the default
net's size are measured interleaved with ours and the ratios printed. --quality also trains every
network on the same MNIST images with main.py's default recipe and scores 256 samples with
metrics.py: the fid each reaches after the same number of images. --device cuda runs it all on a
GPU (bf16 by autocast there). Nothing here is a test: no assertions.
"""
import argparse
import platform
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from catalog import RECIPE, unet_widths_for
from ddpm import DDPM, linear_beta_schedule
from errors import Parser, run_script
from files import write_json
from settings import SEED_MAX
from training import train_step
from unet import NETWORKS, count_parameters

DEFAULT_WIDTHS = unet_widths_for(28)
DEFAULT = f"UNet {DEFAULT_WIDTHS} (default)"
CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained n x n matmul throughput in GFLOP/s (2 n^3 per product)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            count += 1
        sync(device)
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


class Peer(torch.nn.Module):
    """A peer U-Net wrapped to our call eps_model(x_t, t) -> eps."""

    def __init__(self, net, diffusers: bool):
        super().__init__()
        self.net, self.diffusers = net, diffusers

    def forward(self, x_t, t, **cond):
        return self.net(x_t, t).sample if self.diffusers else self.net(x_t, t)


def peers(channels: int) -> dict:
    """Other projects' U-Nets of about our default net's size (150k parameters), if installed (not in
    requirements.txt): three resolutions, one residual block each, attention at the middle one."""
    found = {}
    try:
        from diffusers import UNet2DModel
        found["diffusers UNet2DModel (12, 24, 24)"] = Peer(UNet2DModel(
            sample_size=28, in_channels=channels, out_channels=channels, block_out_channels=(12, 24, 24),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4), True)
    except ImportError:
        pass
    try:
        from denoising_diffusion_pytorch import Unet
        found["denoising_diffusion_pytorch Unet (dim 8)"] = Peer(Unet(dim=8, channels=channels, dim_mults=(1, 2, 2)),
                                                                 False)
    except ImportError:
        pass
    return found


def train_step_fn(net, channels: int, batch: int, bf16: bool, device: torch.device = CPU):
    """One Algorithm 1 step (loss, backward, Adam) on a fixed random batch; returns a callable."""
    model = DDPM(net, linear_beta_schedule(1000)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=True)
    x0 = torch.randn(batch, channels, 28, 28, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            train_step(model, opt, None, x0, step=1, lr=1e-4, warmup=0)
    return step


def flops_per_image(net, channels: int, batch: int, device: torch.device = CPU) -> float:
    with FlopCounterMode(display=False) as counter:
        train_step_fn(net, channels, batch, False, device)()
    return counter.get_total_flops() / batch


@torch.no_grad()
def ms_per_sampling_step(net, channels: int, device: torch.device, n: int = 64, repeats: int = 5) -> float:
    x, t = torch.randn(n, channels, 28, 28, device=device), torch.full((n,), 500, device=device)
    net(x, t)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        net(x, t)
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_img_per_s(nets: dict, channels: int, batch: int, steps: int, warmup: int, bf16: bool,
                          device: torch.device) -> dict:
    """Median images/s per network, their steps taken in turn so that load affects all alike."""
    fns = {name: train_step_fn(net, channels, batch, bf16, device) for name, net in nets.items()}
    times = {name: [] for name in nets}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def networks(channels: int) -> dict:
    """Every network of unet.NETWORKS as main.py builds it for 28x28 images (the U-Net with its default
    widths), the U-Net with the old (paper-like) widths 32 64 64, and the peers."""
    torch.manual_seed(0)
    config = {"in_channels": channels, "image_size": 28, "num_classes": 0, "cond_channels": 0,
              "unet_widths": list(DEFAULT_WIDTHS)}
    names = {"unet": DEFAULT, "cnn": "CNN (coursework)"}
    nets = {names.get(name, name): build(config) for name, build in NETWORKS.items()}
    nets["UNet (32, 64, 64)"] = NETWORKS["unet"]({**config, "unet_widths": [32, 64, 64]})
    nets.update(peers(channels))
    return nets


def fid_after(nets: dict, images: int, data_dir: str, device: torch.device, seed: int = 0) -> dict:
    """Each network trained on the same `images` MNIST images (one shuffle, repeated if more than an epoch)
    with main.py's default recipe (Algorithm 1 with min-SNR weights, Adam at RECIPE's lr with warm-up, EMA), then
    256 DDIM samples (50 steps, eta 1, clipped x0, EMA weights) scored by metrics.py: {name: row}."""
    from data import load_dataset
    from metrics import QualityScore
    from models import EMA
    train = load_dataset("mnist", data_dir, train=True, download=False)
    score = QualityScore("mnist", data_dir)
    B, rows = RECIPE["batch_size"], {}
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(train.images), generator=g) for _ in range(-(-images // len(train.images)))])
    x_all = train.images.to(device)
    for name, net in nets.items():
        torch.manual_seed(seed)
        model = DDPM(net, linear_beta_schedule(1000), clip_x0=True, min_snr_gamma=RECIPE["min_snr"]).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
        ema = EMA(model, RECIPE["ema_decay"])
        sync(device)
        start = time.perf_counter()
        for step, i in enumerate(range(0, images - B + 1, B), start=1):
            loss = train_step(model, opt, ema, x_all[order[i:i + B].to(device)], step, RECIPE["lr"], RECIPE["warmup"])
        sync(device)
        seconds = time.perf_counter() - start
        samples = ema.model.ddim_sample(256, (1, 28, 28), 50, 1.0, torch.Generator(device).manual_seed(seed + 1))
        rows[name] = {"train_seconds": seconds, "final_loss": loss, **score(samples.cpu())}
        print(f"  {name:42s} {step * B} images in {seconds:6.1f} s: fid {rows[name]['fid']:.1f} "
              f"(fid_real {rows[name]['fid_real']:.1f})", flush=True)
    return rows


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    run_script(p, lambda a: run(a, p), args)  # a device that is not here, MNIST missing for --quality, ...


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 timed steps, 1 channel, 3 timed sampling steps")
    p.add_argument("--steps", type=int, help="timed training steps per network (default 20; --quick 3)")
    p.add_argument("--quality", action="store_true", help="also train each network on --images MNIST images and "
                   "print the fid it reaches (needs MNIST in --data-dir)")
    p.add_argument("--images", type=int, default=60000, help="--quality: training images per network")
    p.add_argument("--data-dir", default="./data", help="--quality: where MNIST is")
    p.add_argument("--seed", type=int, default=0, help="--quality: seeds the initialisation, batches and samples")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", default="bench.json")
    return p


def run(args, p: argparse.ArgumentParser) -> None:
    if args.steps is not None and not 1 <= args.steps <= 1000:
        p.error("--steps must lie in 1..1000")
    if not RECIPE["batch_size"] <= args.images <= 10_000_000:
        p.error(f"--images must lie in {RECIPE['batch_size']}..10000000")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must lie in 0..{SEED_MAX}")
    if not args.out.endswith(".json"):
        p.error(f"--out {args.out} must end in .json (bench.py writes its measurements there)")
    from models import pick_device
    device = pick_device(args.device)
    if args.quality:  # fail now, not after the speed part: --quality needs MNIST on disk
        from data import load_dataset
        load_dataset("mnist", args.data_dir, train=True, download=False, limit=1)
    steps = args.steps or (3 if args.quick else 20)
    warmup = 1 if args.quick else 3
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}"
    print(f"bench.py: torch {torch.__version__}, {torch.get_num_threads()} threads, {where}")
    peak = {"fp32": matmul_gflops(torch.float32, device, seconds=0.5 if args.quick else 2),
            "bf16": matmul_gflops(torch.bfloat16, device, n=256 if device.type == "cpu" else 1024, seconds=0.5)}
    bf16_ok = peak["bf16"] > peak["fp32"]  # no native bf16 here: emulated bf16 is many times slower
    print(f"matmul: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s"
          + ("" if bf16_ok else " (no native bf16 on this CPU: bf16 training skipped)"))
    results = {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": where,
                           "matmul_gflops": peak}, "networks": []}
    header = f"{'network':42s} {'C':>2s} {'params':>8s} {'MFLOP/img':>10s} {'img/s fp32':>10s} {'img/s bf16':>10s} " \
             f"{'% fp32 peak':>11s} {'ms/step(64)':>11s} {'grid s':>7s}"
    print(header)
    for channels in (1,) if args.quick else (1, 3):
        nets = {name: net.to(device) for name, net in networks(channels).items()}
        fp32 = interleaved_img_per_s(nets, channels, 128, steps, warmup, False, device)
        bf16 = interleaved_img_per_s(nets, channels, 128, steps, warmup, True, device) if bf16_ok else {}
        for name, net in nets.items():
            flops = flops_per_image(net, channels, 16, device)
            ms = ms_per_sampling_step(net, channels, device, repeats=3 if args.quick else 10)
            row = {"network": name, "channels": channels, "params": count_parameters(net), "flops_per_image": flops,
                   "img_per_s_fp32": fp32[name], "img_per_s_bf16": bf16.get(name),
                   "fraction_of_fp32_peak": fp32[name] * flops / 1e9 / peak["fp32"],
                   "ms_per_sampling_step_64": ms, "grid_seconds_ddim50": 50 * ms / 1000}
            results["networks"].append(row)
            print(f"{name:42s} {channels:2d} {row['params']:8d} {flops / 1e6:10.1f} {fp32[name]:10.0f} "
                  f"{bf16[name] if name in bf16 else float('nan'):10.0f} {100 * row['fraction_of_fp32_peak']:10.0f}% "
                  f"{ms:11.1f} {row['grid_seconds_ddim50']:7.1f}")
        for name in nets:
            if not name.startswith(("CNN", "UNet")):
                print(f"  default UNet / {name}: {fp32[DEFAULT] / fp32[name]:.2f}x training img/s (fp32)")
    print("grid s: 64 samples x 50 DDIM steps (main.py's per-epoch default) from ms/step")
    if args.quality:
        print(f"fid after {args.images} MNIST images with main.py's default recipe (256 DDIM samples, metrics.py):")
        results["quality"] = fid_after(networks(1), args.images, args.data_dir, device, args.seed)
    write_json(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
