"""What makes a U-Net learn more from each image: python -m bench.ablate [--table one|zero|process] [--images N].

One change at a time to our default U-Net (unet.UNet, widths 16 32 32), each trained with main.py's recipe
(peers.race: Algorithm 1 with min-SNR weights, Adam with warm-up, EMA, batch 32) on the same MNIST images in
the same order, from the same seed, scored every --every images by the fid of 256 DDIM samples (metrics.py).
Prints a table of fid against images and against training seconds, and writes --out (JSON). A measurement,
not a test; docs/quality.md reports what it printed, with the machine.
"""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import argparse
import sys

import torch

from bench.peers import race
from models import by_size
from plumbing.errors import Parser, run_script
from plumbing.run import write_json
from unet import VERSIONS, UNet, count_parameters

# One change at a time against the default, then all of them together (the names are the table's rows):
# name -> (U-Net options, changes to main.py's recipe).
ONE_AT_A_TIME = {
    "default (GELU, emb added, 1 block per level)": ({}, {}),
    "zero-init last conv of every block and output": ({"zero_init": True}, {}),
    "SiLU instead of GELU": ({"act": "silu"}, {}),
    "AdaGN: emb scales and shifts the norm": ({"scale_shift": True}, {}),
    "2 decoder blocks, a skip from every encoder block": ({"skip_every": True}, {}),
    "attention also at 14 px": ({"attention_res": (14,)}, {}),
    "embedding width 2 x c1 (instead of 4 x)": ({"emb_mult": 2}, {}),
    "all of the above but emb width and attention": ({"zero_init": True, "act": "silu", "scale_shift": True,
                                                      "skip_every": True}, {}),
}
ZERO = {"zero_init": True}
# The same on top of zero-init, the change that paid most, and the recipe's learning rate and EMA decay.
ON_ZERO_INIT = {
    "zero-init": (ZERO, {}),
    "zero-init + AdaGN": ({**ZERO, "scale_shift": True}, {}),
    "zero-init + SiLU": ({**ZERO, "act": "silu"}, {}),
    "zero-init + AdaGN + SiLU": ({**ZERO, "scale_shift": True, "act": "silu"}, {}),
    "zero-init + 2 decoder blocks, skip from every block": ({**ZERO, "skip_every": True}, {}),
    "zero-init + attention also at 14 px": ({**ZERO, "attention_res": (14,)}, {}),
    "zero-init, lr 4e-3": (ZERO, {"lr": 4e-3}),
    "zero-init, lr 1e-3": (ZERO, {"lr": 1e-3}),
    "zero-init, EMA 0.995": (ZERO, {"ema_decay": 0.995}),
}
# The process at equal images and seconds, on the default network (design 2): what the network predicts
# (eps, v: vpred.py) and the process itself (flow matching: flow.py; EDM: edm.py), each sampled in 50 steps.
V2 = VERSIONS[2]
PROCESS = {
    "DDPM, eps, min-SNR 5, DDIM eta 1 (the default)": (V2, {}),
    "DDPM, eps, min-SNR 5, DDIM eta 0": (V2, {"eta": 0.0}),
    "VPRED, v, min-SNR 5, DDIM eta 1": (V2, {"model": "VPRED"}),
    "VPRED, v, min-SNR 5, DDIM eta 0": (V2, {"model": "VPRED", "eta": 0.0}),
    "FLOW, velocity, Euler": (V2, {"model": "FLOW"}),
    "EDM, preconditioned, Heun": (V2, {"model": "EDM"}),
}
TABLES = {"one": ONE_AT_A_TIME, "zero": ON_ZERO_INIT, "process": PROCESS}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=30000, help="training images per variant")
    p.add_argument("--every", type=int, default=15000, help="score the fid every this many images")
    p.add_argument("--table", choices=TABLES, default="one", help="one: one change at a time against the default; "
                   "zero: the same on top of zero-init, and the recipe's learning rate and EMA decay; process: "
                   "eps, v and flow matching on the default network")
    p.add_argument("--only", nargs="+", metavar="N", type=int, help="run only these rows of the table (0, 1, ...)")
    p.add_argument("--data-dir", default="./data", help="holds MNIST/raw/ (as main.py reads it)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ablate.json")
    return p


def run(args) -> None:
    from data import load_dataset
    from metrics import QualityScore
    train = load_dataset("mnist", args.data_dir, train=True, download=False)
    score = QualityScore("mnist", args.data_dir)
    order = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(args.seed))
    order = order.repeat(-(-args.images // len(order)))
    rows = {}
    for j, (name, (options, recipe)) in enumerate(TABLES[args.table].items()):
        if args.only and j not in args.only:
            continue
        torch.manual_seed(args.seed)
        net = UNet(1, by_size("DDPM", 28, dims=2, epochs=6)["unet_widths"], image_size=28, **options)
        print(f"{name}: {count_parameters(net):,} parameters", flush=True)
        rows[name] = race(name, net, train.images, order=order, score=score, stop_images=args.images,
                          budget_s=float("inf"), every=args.every, target=None, precision=args.precision,
                          device=torch.device("cpu"), seed=args.seed, recipe=recipe)
        rows[name].update(parameters=count_parameters(net), options=options, recipe=recipe)
    print(f"{'variant':52s} {'params':>8s} " + " ".join(f"{'fid@' + str(r['images']):>10s} {'s':>6s}"
                                                         for r in next(iter(rows.values()))["trace"]))
    for name, row in rows.items():
        print(f"{name:52s} {row['parameters']:8,d} " + " ".join(f"{r['fid']:10.1f} {r['train_seconds']:6.0f}"
                                                              for r in row["trace"]))
    write_json(rows, args.out)
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    p = build_parser()
    run_script(p, run, p.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
