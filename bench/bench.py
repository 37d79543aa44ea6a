"""How fast the networks train and sample on this machine: python -m bench [--quick] [--compile]
[--concurrent 2] [--quality].

Prints tables and writes bench.json, all measured in this one run, on the CPU capability it prints:
- the machine's matmul throughput (fp32, bf16) and whether it computes bf16 natively (plumbing/run.py);
- per network at main.py's batch (32; --batch): training images/s (median over steps after warm-up,
  taken in turn; Algorithm 1 with Adam, as main.py trains) in fp32 and, where native, bf16 autocast,
  FLOPs per training image (torch.utils.flop_counter), the share of the matmul peak of the faster
  precision, ms per sampling step for 64 images and the per-epoch grid's sampling time;
- the training step's variants on the default U-Net: a host sync per step (loss.item(), as before),
  fused and foreach Adam, channels_last, bf16, and with --compile torch.compile with its compile time;
- the 3D U-Net on 32^3 volumes (--dataset phantom3d): volumes/s, FLOPs per volume, ms per sampling step;
- --concurrent N: one epoch of main.py on 4,096 MNIST images alone, then N side by side (started 1 s
  apart), under OpenMP's wait settings (POLICIES): the seconds each takes, and their losses;
- --quality: time to a fid (peers.py): our default U-Net trains --images MNIST images with main.py's
  recipe; every peer trains until its fid reaches ours, and the times are compared.
Peers (diffusers, denoising_diffusion_pytorch, MONAI) are measured when installed. --device cuda runs
it on a GPU. Nothing here is a test: no assertions.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.peers import peers, time_to_fid
from bench.step import train_step
from ddpm import DDPM, linear_beta_schedule
from models import by_size
from plumbing.errors import Parser, run_script
from plumbing.run import native_bf16, pick_device, write_json
from plumbing.settings import SEED_MAX
from unet import NETWORKS, count_parameters

MNIST = by_size("DDPM", 28, dims=2, epochs=6)  # main.py's defaults for 28 px in runs under 12 epochs (the race's 6)
DEFAULT = f"UNet {tuple(MNIST['unet_widths'])} (default under 12 epochs)"
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


def train_step_fn(net, channels: int, batch: int, precision: str = "fp32", device: torch.device = CPU,
                  adam: dict | None = None, channels_last: bool = False, read_loss: bool = False):
    """One Algorithm 1 step (loss, backward, Adam) on a fixed random batch, as main.py takes it; returns a
    callable. adam: Adam's options (fused, foreach); read_loss: read the loss back every step (a host sync)."""
    model = DDPM(net, linear_beta_schedule(1000)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **(adam or {}))
    x0 = torch.randn(batch, channels, 28, 28, device=device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def step():
        loss = train_step(model, opt, None, x0=x0, step=1, lr=1e-4, warmup=0, precision=precision)
        return loss.item() if read_loss else loss
    return step


def flops_per_image(net, channels: int, batch: int, device: torch.device = CPU) -> float:
    with FlopCounterMode(display=False) as counter:
        train_step_fn(net, channels, batch, device=device)()
    return counter.get_total_flops() / batch


@torch.no_grad()
def ms_per_sampling_step(net, channels: int, device: torch.device, precision: str, n: int = 64,
                         repeats: int = 5) -> float:
    x, t = torch.randn(n, channels, 28, 28, device=device), torch.full((n,), 500, device=device)
    times = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        net(x, t)
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            net(x, t)
            sync(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_img_per_s(fns: dict, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Median images/s per step function, their steps taken in turn so that load affects all alike."""
    times = {name: [] for name in fns}
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
    widths), the U-Net with the old (paper-like) widths 32 64 64, and the peers (peers.py)."""
    torch.manual_seed(0)
    config = {"in_channels": channels, "image_size": 28, "num_classes": 0, "cond_channels": 0,
              "unet_widths": MNIST["unet_widths"], "unet_version": MNIST["unet_version"]}
    names = {"unet": DEFAULT, "cnn": "CNN (coursework)"}
    nets = {names.get(name, name): build(config) for name, build in NETWORKS.items()}
    nets["UNet (32, 64, 64)"] = NETWORKS["unet"]({**config, "unet_widths": [32, 64, 64]})
    nets.update(peers(channels))
    return nets


def default_net(channels: int = 1):
    torch.manual_seed(0)
    return NETWORKS["unet"]({"in_channels": channels, "image_size": 28, "num_classes": 0, "cond_channels": 0,
                             "unet_widths": MNIST["unet_widths"], "unet_version": MNIST["unet_version"]})


def step_variants(batch: int, steps: int, warmup: int, device: torch.device, bf16: bool, compile_: bool) -> dict:
    """img/s of the default U-Net's training step as main.py takes it (fp32, no host sync) and its variants,
    interleaved; with compile_ also torch.compile's (its compile time measured apart)."""
    variants = {"main.py's step (fp32, loss read every 50 steps)": {},
                "+ loss.item() every step (a host sync)": {"read_loss": True},
                "Adam fused=True": {"adam": {"fused": True}}, "Adam foreach=True": {"adam": {"foreach": True}},
                "channels_last": {"channels_last": True}}
    if bf16:
        variants.update({"bf16 autocast": {"precision": "bf16"},
                         "bf16 autocast + Adam fused": {"precision": "bf16", "adam": {"fused": True}}})
    fns = {name: train_step_fn(default_net(), 1, batch, device=device, **kw) for name, kw in variants.items()}
    extra = {}
    if compile_:
        net = torch.compile(default_net())
        fn = train_step_fn(net, 1, batch, device=device, precision="bf16" if bf16 else "fp32")
        sync(device)
        start = time.perf_counter()
        fn()
        fn()
        sync(device)
        extra["compile_seconds"] = time.perf_counter() - start
        fns[f"torch.compile ({'bf16' if bf16 else 'fp32'})"] = fn
    return {"img_per_s": interleaved_img_per_s(fns, batch, steps, warmup=warmup, device=device), **extra}


def volumes(device: torch.device, native: bool, steps: int, warmup: int, batch: int = 8, side: int = 32) -> dict:
    """The 3D U-Net as main.py builds it for --dataset phantom3d (side^3 volumes, models.by_size's widths):
    training volumes/s at `batch` (fp32, and bf16 where native), FLOPs per volume, ms per sampling step for 8."""
    torch.manual_seed(0)
    volume = by_size("DDPM", side, dims=3, epochs=1)
    net = NETWORKS["unet"]({"in_channels": 1, "image_size": side, "num_classes": 0, "cond_channels": 0, "dims": 3,
                            **{k: volume[k] for k in ("unet_widths", "unet_version")}}).to(device)
    model = DDPM(net, linear_beta_schedule(1000)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 1, side, side, side, device=device)
    fns = {p: (lambda p=p: train_step(model, opt, None, x0=x0, step=1, lr=1e-4, warmup=0, precision=p))
           for p in (("fp32", "bf16") if native else ("fp32",))}
    speed = interleaved_img_per_s(fns, batch, steps, warmup=warmup, device=device)
    with FlopCounterMode(display=False) as counter:
        fns["fp32"]()
    best = max(speed, key=speed.get)
    x, t = torch.randn(8, 1, side, side, side, device=device), torch.full((8,), 500, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=best == "bf16"):
        net(x, t)
        sync(device)
        start = time.perf_counter()
        net(x, t)
        sync(device)
    return {"widths": by_size("DDPM", side, dims=3, epochs=1)["unet_widths"], "side": side, "batch": batch,
            "params": count_parameters(net),
            "flops_per_volume": counter.get_total_flops() / batch, "volumes_per_s": speed, "faster": best,
            "ms_per_sampling_step_8": 1000 * (time.perf_counter() - start)}


POLICIES = {"GOMP_SPINCOUNT=300000 (libgomp's default)": {"GOMP_SPINCOUNT": "300000"},
            "GOMP_SPINCOUNT=10000 (the scripts' default)": {"GOMP_SPINCOUNT": "10000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def concurrent(n: int, data_dir: str, limit: int = 4096) -> dict:
    """One epoch of main.py DDPM on `limit` MNIST images (fp32, no scores) alone and n side by side, each with every
    core (--threads auto), under OpenMP's wait settings (POLICIES): train seconds each, and the epoch's losses (the
    same: when a thread waits changes nothing it sums)."""
    main_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
    plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        def runs(k: int, env: dict, tag: str) -> list:
            procs = []
            for j in range(k):
                out = os.path.join(tmp, f"{tag}{j}")
                procs.append((subprocess.Popen([sys.executable, main_py, "DDPM", "--limit", str(limit), "--epochs", "1",
                                                "--eval-samples", "0", "--num-samples", "8", "--precision", "fp32",
                                                "--data-dir", data_dir, "--out", out],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**plain, **env}),
                              out))
                time.sleep(1.0)
            rows = []
            for proc, out in procs:
                _, err = proc.communicate()
                if proc.returncode:
                    raise RuntimeError(f"main.py failed in --concurrent: {err.decode().strip()[-300:]}")
                with open(os.path.join(out, "metrics.csv")) as f:
                    rows.append(dict(zip(*[line.split(",") for line in f.read().splitlines()[:2]])))
            return [(float(r["train_seconds"]), float(r["loss"])) for r in rows]
        for i, (name, env) in enumerate(POLICIES.items()):
            (solo, loss), side = runs(1, env, f"solo{i}")[0], runs(n, env, f"side{i}")
            results[name] = {"solo_seconds": solo, "side_by_side_seconds": [s for s, _ in side],
                             "losses": [loss, *(v for _, v in side)]}
            print(f"  {name:44s}: alone {solo:5.1f} s; {n} side by side " + ", ".join(f"{s:.1f} s" for s, _ in side)
                  + f"; epoch losses {', '.join(str(v) for v in results[name]['losses'])}", flush=True)
    return results


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    # a device that is not here, MNIST missing for --quality, ...: one line
    run_script(p, lambda a: run(a, p), args, memory="lower --batch")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 timed steps, 1 channel, 3 timed sampling steps")
    p.add_argument("--steps", type=int, help="timed training steps per network (default 20; --quick 3)")
    p.add_argument("--batch", type=int, default=MNIST["batch_size"], help="training batch (main.py's default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile on the default U-Net")
    p.add_argument("--concurrent", type=int, metavar="N", help="also run N main.py epochs side by side (needs MNIST)")
    p.add_argument("--quality", action="store_true", help="also race every network to our default's fid after "
                   "--images MNIST images (needs MNIST in --data-dir)")
    p.add_argument("--images", type=int, default=60000, help="--quality: our default network's training images")
    p.add_argument("--every", type=int, default=10000, help="--quality: images between scores")
    p.add_argument("--budget", type=float, default=3.0,
                   help="--quality: other networks stop after this many times our training time")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="--quality: precision of every network (auto: as main.py chooses, by the hardware)")
    p.add_argument("--data-dir", default="./data", help="--quality, --concurrent: where MNIST is")
    p.add_argument("--seed", type=int, default=0, help="--quality: seeds the initialisation, batches and samples")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", default="bench.json")
    return p


def run(args, p: argparse.ArgumentParser) -> None:
    """The machine, the networks' table, the step's variants, the 3D U-Net, then --concurrent and --quality."""
    check(args, p)
    device = pick_device(args.device)
    if args.quality or args.concurrent:  # fail now, not after the speed part: they need MNIST on disk
        from data import load_dataset
        load_dataset("mnist", args.data_dir, train=True, download=False, limit=1)
    steps, warmup = args.steps or (3 if args.quick else 20), 1 if args.quick else 3
    results = machine(device, args.quick)
    results.update(batch=args.batch, networks=network_table(device, results, args.batch, steps=steps, warmup=warmup,
                                                            quick=args.quick))
    results["step_variants"] = print_step_variants(device, results, args.batch, steps=steps, warmup=warmup,
                                                   compile_=args.compile)
    results["volumes"] = print_volumes(device, results, steps)
    if args.concurrent:
        print(f"{args.concurrent} runs of main.py side by side (one epoch, 4,096 MNIST images, fp32):")
        results["concurrent"] = concurrent(args.concurrent, args.data_dir)
    if args.quality:
        results["quality"] = print_quality(args, device)
    write_json(results, args.out)
    print(f"wrote {args.out}")


def check(args, p: argparse.ArgumentParser) -> None:
    """Numbers out of range end here in one line, before anything is measured."""
    if args.steps is not None and not 1 <= args.steps <= 1000:
        p.error("--steps must lie in 1..1000")
    for key, low, high in (("batch", 1, 4096), ("concurrent", 2, 16), ("every", 32, 10_000_000),
                           ("images", 32, 10_000_000)):
        if getattr(args, key) is not None and not low <= getattr(args, key) <= high:
            p.error(f"--{key} must lie in {low}..{high}")
    if not 1 <= args.budget <= 100:
        p.error("--budget must lie in 1..100")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must lie in 0..{SEED_MAX}")
    if not args.out.endswith(".json"):
        p.error(f"--out {args.out} must end in .json (bench.py writes its measurements there)")


def machine(device: torch.device, quick: bool) -> dict:
    """torch, threads, the CPU or GPU, native bf16 and the matmul peaks, printed and returned."""
    native = native_bf16(device)
    why = "avx512_bf16 or amx_bf16" if native and device.type == "cpu" else "compute capability" if native else \
        "bf16 is emulated"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}"
    print(f"bench.py: torch {torch.__version__}, {torch.get_num_threads()} threads, {where}; native bf16: "
          f"{'yes' if native else 'no'} ({why})")
    peak = {"fp32": matmul_gflops(torch.float32, device, seconds=0.5 if quick else 2),
            "bf16": matmul_gflops(torch.bfloat16, device, n=1024 if native else 256, seconds=0.5)}
    print(f"matmul 1024^2: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s"
          + ("" if native else " (emulated, at 256^2: bf16 training skipped)"))
    return {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": where,
                        "native_bf16": native, "native_bf16_why": why, "matmul_gflops": peak}}


def network_table(device: torch.device, results: dict, B: int, steps: int, warmup: int, quick: bool) -> list:
    """One row per network and channel count: parameters, FLOPs, img/s per precision, % of peak, sampling."""
    native, peak = results["machine"]["native_bf16"], results["machine"]["matmul_gflops"]
    rows = []
    print(f"training at batch {B}; % peak: of the matmul peak of the faster precision")
    print(f"{'network':42s} {'C':>2s} {'params':>8s} {'MFLOP/img':>10s} {'img/s fp32':>10s} {'img/s bf16':>10s} "
          f"{'% peak':>8s} {'ms/step(64)':>11s} {'grid s':>7s}")
    for channels in (1,) if quick else (1, 3):
        nets = {name: net.to(device) for name, net in networks(channels).items()}
        speeds = {precision: interleaved_img_per_s({name: train_step_fn(net, channels, B, precision=precision,
                                                                        device=device) for name, net in nets.items()},
                                                   B, steps, warmup=warmup, device=device)
                  for precision in (("fp32", "bf16") if native else ("fp32",))}
        for name, net in nets.items():
            flops = flops_per_image(net, channels, 16, device=device)
            best = max(speeds, key=lambda precision: speeds[precision][name])
            ms = ms_per_sampling_step(net, channels, device, precision=best, repeats=3 if quick else 10)
            row = {"network": name, "channels": channels, "params": count_parameters(net), "flops_per_image": flops,
                   "img_per_s_fp32": speeds["fp32"][name], "img_per_s_bf16": speeds.get("bf16", {}).get(name),
                   "faster": best, "fraction_of_peak": speeds[best][name] * flops / 1e9 / peak[best],
                   "ms_per_sampling_step_64": ms, "grid_seconds_ddim50": 50 * ms / 1000}
            rows.append(row)
            print(f"{name:42s} {channels:2d} {row['params']:8d} {flops / 1e6:10.1f} {row['img_per_s_fp32']:10.0f} "
                  f"{row['img_per_s_bf16'] or float('nan'):10.0f} {100 * row['fraction_of_peak']:3.0f}% {best} "
                  f"{ms:11.1f} {row['grid_seconds_ddim50']:7.1f}")
        for name in nets:
            if not name.startswith(("CNN", "UNet")):
                ours, theirs = (max(v[n] for v in speeds.values()) for n in (DEFAULT, name))
                print(f"  default UNet / {name}: {ours / theirs:.2f}x training img/s (each in its faster precision)")
    print("grid s: 64 samples x 50 DDIM steps (main.py's per-epoch default) from ms/step, in the faster precision")
    return rows


def print_step_variants(device: torch.device, results: dict, B: int, steps: int, warmup: int, compile_: bool) -> dict:
    native = results["machine"]["native_bf16"]
    print(f"the training step of the default U-Net at batch {B}, variants taken in turn:")
    variants = step_variants(B, steps, warmup, device=device, bf16=native, compile_=compile_)
    base = next(iter(variants["img_per_s"].values()))
    for name, speed in variants["img_per_s"].items():
        print(f"  {name:50s} {speed:7.0f} img/s  {speed / base:5.2f}x")
    if "compile_seconds" in variants:  # against the eager step of the same precision
        speeds = variants["img_per_s"]
        eager = speeds["bf16 autocast" if native else next(iter(speeds))]
        gain = 1 / eager - 1 / list(speeds.values())[-1]  # seconds saved per image
        payback = f"after {variants['compile_seconds'] / gain:,.0f} images" if gain > 0 else "never (no faster)"
        print(f"  torch.compile took {variants['compile_seconds']:.0f} s; against the same step uncompiled, it pays "
              f"back {payback}")
    return variants


def print_volumes(device: torch.device, results: dict, steps: int) -> dict:
    v = volumes(device, results["machine"]["native_bf16"], max(2, steps // 4), warmup=1)
    print(f"3D U-Net {tuple(v['widths'])} on {v['side']}^3 volumes (--dataset phantom3d), batch {v['batch']}: "
          f"{v['params']:,} parameters, {v['flops_per_volume'] / 1e9:.1f} GFLOP per training volume, "
          + ", ".join(f"{s:.1f} volumes/s {p}" for p, s in v["volumes_per_s"].items())
          + f"; {v['ms_per_sampling_step_8']:.0f} ms per sampling step for 8 volumes ({v['faster']})")
    return v


def print_quality(args, device: torch.device) -> dict:
    """--quality: our default trains --images MNIST images; each peer trains until it reaches our fid."""
    print(f"time to fid (peers.py): our default U-Net trains {args.images} MNIST images with main.py's recipe "
          f"(batch {MNIST['batch_size']}); the others until they reach its fid (256 DDIM samples, metrics.py):")
    racers = {name: net for name, net in networks(1).items() if name == DEFAULT or name in peers(1)}
    rows = time_to_fid(racers, DEFAULT, args.images, data_dir=args.data_dir, device=device, seed=args.seed,
                       every=args.every, budget=args.budget, precision=args.precision)
    for name, row in rows.items():
        ratio = f"{row['ratio_to_ours']:.2f}x ours (interpolated {row['ratio_interpolated']:.2f}x)" \
            if row["ratio_to_ours"] else \
            f"not reached in {row['trace'][-1]['train_seconds']:.0f} s (> {row['ratio_at_least']:.2f}x ours)"
        print(f"  {name:42s} to fid {row['target_fid']:.1f}: {ratio}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
