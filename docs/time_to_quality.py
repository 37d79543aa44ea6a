"""The README's curve: fid against training seconds, from run folders' metrics.csv.

python docs/time_to_quality.py RUN [RUN ...] --labels NAME [NAME ...] --machine TEXT --out docs/time_to_quality.png

Each RUN is a main.py --out folder (the first one's fid values are written beside its points); its
metrics.csv holds, per epoch, the training seconds and the fid of the
per-epoch samples. The x axis adds up the training seconds (sampling and scoring excluded).
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from figures import pyplot, save_figure  # noqa: E402


def curve(run: str) -> tuple:
    """(cumulative training seconds, fid, fid_real) per epoch of the run."""
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("fid")]
    seconds, total = [], 0.0
    for r in rows:
        total += float(r["train_seconds"])
        seconds.append(total)
    return seconds, [float(r["fid"]) for r in rows], float(rows[-1]["fid_real"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--machine", required=True, help="the machine the runs were made on, for the title")
    p.add_argument("--out", default="docs/time_to_quality.png")
    args = p.parse_args()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (run, label) in enumerate(zip(args.runs, args.labels)):
        seconds, fid, fid_real = curve(run)
        ax.plot([s / 60 for s in seconds], fid, marker="o", label=label)
        for s, f in zip(seconds, fid) if i == 0 else ():  # the first run's values (the others' in the docs)
            ax.annotate(f"{f:.1f}", (s / 60, f), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.axhline(fid_real, color="gray", linestyle=":", label=f"real digits (fid_real {fid_real:.1f})")
    ax.set_xlabel("training minutes (one per point: an epoch of 60,000 images)")
    ax.set_ylabel("fid (256 samples, metrics.py)")
    ax.set_yscale("log")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    ax.yaxis.set_major_locator(FixedLocator([5, 10, 20, 30, 40, 60, 100]))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlim(left=0)
    ax.set_title(f"python main.py DDPM on MNIST: fid against training time\n{args.machine}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")  # where the curves have fallen
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
