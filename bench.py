"""How fast the networks train and sample on this machine: python bench.py [--quick].

Prints a table and writes bench.json, all measured in this one run: the machine's matmul
throughput (fp32, bf16), and per network at batch 128: training images/s (median over steps
after warm-up; Algorithm 1 with Adam, as main.py trains), FLOPs per training image
(torch.utils.flop_counter), the achieved GFLOP/s as a fraction of the matmul throughput, ms per
sampling step for 64 images and the per-epoch grid's sampling time with the default sampler.
When diffusers or denoising_diffusion_pytorch are installed, their U-Nets of about the same size
are measured interleaved with ours and the ratios printed. Nothing here is a test: no assertions.
"""
import argparse
import platform
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm import DDPM, linear_beta_schedule
from figures import write_json
from unet import CNN, UNet, count_parameters

DEFAULT_WIDTHS = (32, 64, 64)  # main.py --unet-widths default


def matmul_gflops(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained n x n matmul throughput in GFLOP/s (2 n^3 per product)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


class Peer(torch.nn.Module):
    """A peer U-Net wrapped to our call eps_model(x_t, t) -> eps."""

    def __init__(self, net, diffusers: bool):
        super().__init__()
        self.net, self.diffusers = net, diffusers

    def forward(self, x_t, t, **cond):
        return self.net(x_t, t).sample if self.diffusers else self.net(x_t, t)


def peers(channels: int) -> dict:
    """Other projects' U-Nets near our default's size, if installed (not in requirements.txt)."""
    found = {}
    try:
        from diffusers import UNet2DModel
        found["diffusers UNet2DModel (24, 48, 48)"] = Peer(UNet2DModel(
            sample_size=28, in_channels=channels, out_channels=channels, block_out_channels=(24, 48, 48),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8), True)
    except ImportError:
        pass
    try:
        from denoising_diffusion_pytorch import Unet
        found["denoising_diffusion_pytorch Unet (dim 16)"] = Peer(Unet(dim=16, channels=channels, dim_mults=(1, 2, 2)),
                                                                  False)
    except ImportError:
        pass
    return found


def train_step_fn(net, channels: int, batch: int, bf16: bool):
    """One Algorithm 1 step (loss, backward, Adam) on a fixed random batch; returns a callable."""
    model = DDPM(net, linear_beta_schedule(1000))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=True)
    x0 = torch.randn(batch, channels, 28, 28)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def flops_per_image(net, channels: int, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        train_step_fn(net, channels, batch, bf16=False)()
    return counter.get_total_flops() / batch


@torch.no_grad()
def ms_per_sampling_step(net, channels: int, n: int = 64, repeats: int = 5) -> float:
    x, t = torch.randn(n, channels, 28, 28), torch.full((n,), 500)
    net(x, t)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x, t)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_img_per_s(nets: dict, channels: int, batch: int, steps: int, warmup: int, bf16: bool) -> dict:
    """Median images/s per network, their steps taken in turn so that load affects all alike."""
    fns = {name: train_step_fn(net, channels, batch, bf16) for name, net in nets.items()}
    times = {name: [] for name in nets}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, 1 channel only, sampling time estimated")
    p.add_argument("--steps", type=int, help="timed training steps per network (default 20; --quick 5)")
    p.add_argument("--out", default="bench.json")
    args = p.parse_args(argv)
    if args.steps is not None and not 1 <= args.steps <= 1000:
        p.error("--steps must lie in 1..1000")
    steps = args.steps or (5 if args.quick else 20)
    warmup = 1 if args.quick else 3
    print(f"bench.py: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}")
    peak = {"fp32": matmul_gflops(torch.float32, seconds=0.5 if args.quick else 2),
            "bf16": matmul_gflops(torch.bfloat16, n=256, seconds=0.5)}
    bf16_ok = peak["bf16"] > peak["fp32"]  # no native bf16 here: emulated bf16 is many times slower
    print(f"matmul: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s"
          + ("" if bf16_ok else " (no native bf16 on this CPU: bf16 training skipped)"))
    results = {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "matmul_gflops": peak},
               "networks": []}
    header = f"{'network':42s} {'C':>2s} {'params':>8s} {'MFLOP/img':>10s} {'img/s fp32':>10s} {'img/s bf16':>10s} " \
             f"{'% fp32 peak':>11s} {'ms/step(64)':>11s} {'grid s':>7s}"
    print(header)
    for channels in (1,) if args.quick else (1, 3):
        torch.manual_seed(0)
        nets = {"CNN (coursework)": CNN(in_channels=channels), f"UNet {DEFAULT_WIDTHS}": UNet(channels, DEFAULT_WIDTHS),
                "UNet (16, 32, 32)": UNet(channels, (16, 32, 32))}
        nets.update(peers(channels))
        fp32 = interleaved_img_per_s(nets, channels, 128, steps, warmup, bf16=False)
        bf16 = interleaved_img_per_s(nets, channels, 128, steps, warmup, bf16=True) if bf16_ok else {}
        for name, net in nets.items():
            flops = flops_per_image(net, channels, 16)
            ms = ms_per_sampling_step(net, channels, repeats=3 if args.quick else 10)
            row = {"network": name, "channels": channels, "params": count_parameters(net), "flops_per_image": flops,
                   "img_per_s_fp32": fp32[name], "img_per_s_bf16": bf16.get(name),
                   "fraction_of_fp32_peak": fp32[name] * flops / 1e9 / peak["fp32"],
                   "ms_per_sampling_step_64": ms, "grid_seconds_ddim50": 50 * ms / 1000}
            results["networks"].append(row)
            print(f"{name:42s} {channels:2d} {row['params']:8d} {flops / 1e6:10.1f} {fp32[name]:10.0f} "
                  f"{bf16[name] if name in bf16 else float('nan'):10.0f} {100 * row['fraction_of_fp32_peak']:10.0f}% "
                  f"{ms:11.1f} {row['grid_seconds_ddim50']:7.1f}")
        ours = fp32[f"UNet {DEFAULT_WIDTHS}"]
        for name in nets:
            if not name.startswith(("CNN", "UNet")):
                print(f"  our UNet / {name}: {ours / fp32[name]:.2f}x training img/s")
    print("grid s: 64 samples x 50 DDIM steps (main.py's per-epoch default) from ms/step")
    write_json(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
