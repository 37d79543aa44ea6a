"""The figures a run writes into contents_<MODEL>/: sample grids, the forward process made
visible, loss curves and mask-conditioned triplets. Inputs are tensors in [-1, 1] unless said."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datatypes import unnormalize_to_zero_to_one
from plumbing.files import mark, save_atomic


def make_grid(x: Tensor, nrow: int = 8, pad: int = 2) -> Tensor:
    """Images (N, C, H, W) in [0, 1] tiled nrow per row with pad black pixels around each: (C, H', W')."""
    N, C, H, W = x.shape  # count, channels, height, width
    rows = -(-N // nrow)
    grid = x.new_zeros(C, pad + rows * (H + pad), pad + min(N, nrow) * (W + pad))
    for i in range(N):
        top, left = pad + (i // nrow) * (H + pad), pad + (i % nrow) * (W + pad)
        grid[:, top:top + H, left:left + W] = x[i]
    return grid


def axial(x: Tensor) -> Tensor:
    """The axial mid-slice (the middle of D) of volumes whose last three dimensions are D, H, W."""
    return x.select(-3, x.shape[-3] // 2)


def mid_slices(x: Tensor) -> Tensor:
    """Volumes (N, C, D, H, W) as their three orthogonal mid-slices, axial (the middle of D), coronal
    (of H) and sagittal (of W), one after the other per volume: (3N, C, S, S) for cubes of side S.
    D runs from inferior to superior (data.load_nifti_folder), so the coronal and sagittal slices are
    flipped to show superior at the top, as scanners do."""
    N, C, D, H, W = x.shape  # count, channels, depth, height, width
    coronal, sagittal = x[:, :, :, H // 2].flip(-2), x[:, :, :, :, W // 2].flip(-2)
    return torch.stack([axial(x), coronal, sagittal], dim=1).flatten(0, 1)


def save_slice_strip(x: Tensor, path: str, rows: int = 4, slices: int = 8) -> None:
    """The first `rows` volumes (N, C, D, H, W) in [-1, 1], one per row, by `slices` axial slices evenly spaced
    through D (z = ... above the columns): what a radiologist scrolls through."""
    D = x.shape[2]
    z = [int((j + 0.5) * D / slices) for j in range(slices)]
    strip = x[:rows, :, z].transpose(1, 2).flatten(0, 1)  # (rows * slices, C, H, W)
    save_grid(strip, path, nrow=slices, col_labels=[f"z={k}" for k in z])


def sampler_text(sampler: str, steps: int, eta: float, T: int) -> str:
    """How samples were drawn, for titles and logs: "DDIM, 50 steps, eta 1", "Algorithm 2, 1000 steps", ..."""
    return {"ddim": f"DDIM, {steps} steps, eta {eta:g}", "ddpm": f"Algorithm 2, {T} steps",
            "euler": f"Euler, {steps} steps", "heun": f"Heun, {steps} steps"}.get(sampler, f"sampler {sampler}")


def enlargement(side: int) -> int:
    """How many screen pixels a pixel of an image of this side takes in a grid: small images (MNIST's 28, a
    volume's 32) are enlarged to about 64 pixels a side (nearest neighbour), so that a grid reads at its real size."""
    return max(1, 64 // side)


def save_grid(x: Tensor, path: str, nrow: int = 8, col_labels=None, row_labels=None, title: str | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as one PNG grid (8-bit), mapped back to [0, 1] and enlarged
    (enlargement). col_labels / row_labels: text written above the columns / left of the rows (e.g. t = ...,
    the class); title: a line above all (what drew the samples). Volumes (N, C, D, H, W) are shown as their
    mid-slices (mid_slices), three columns per volume, headed axial | coronal | sagittal."""
    from PIL import Image
    if x.dim() == 5:
        col_labels = col_labels or ["axial", "coronal", "sagittal"] * min(nrow, len(x))
        x, nrow = mid_slices(x), 3 * nrow
    s = enlargement(x.shape[-1])
    grid = make_grid(unnormalize_to_zero_to_one(x.float().cpu()), nrow).repeat_interleave(s, 1).repeat_interleave(s, 2)
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    if col_labels or row_labels or title:
        image = with_labels(image, s * (x.shape[-1] + 2), s * (x.shape[-2] + 2), col_labels=col_labels or [],
                            row_labels=row_labels or [], title=title, pad=2 * s)
    from PIL import PngImagePlugin

    def write(p):
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", mark())  # plumbing/files.py: this project's output at this path
        image.save(p, format="PNG", pnginfo=info)
    save_atomic(write, path, ours_only=True)


def save_sample_grid(x: Tensor, path: str, masks: Tensor | None = None, labels: Tensor | None = None,
                     title: str | None = None) -> None:
    """Drawn samples as a student reads them. With condition masks: triplets mask | sample | outline, two a
    row, headed (volumes: one a row, by their axial, coronal and sagittal mid-slices); with class labels that
    run 8 to a class: a class a row, labelled y=...; else 8 a row, or about square for many (256: 16 x 16;
    volumes: 4 a row, by their mid-slices)."""
    if masks is not None:
        cols = ["mask", "sample", "outline"] * 2 if x.dim() == 4 else \
            [w for view in ("ax.", "cor.", "sag.") for w in (f"{view} mask", "sample", "outline")]
        save_grid(mask_triplets(x, masks), path, nrow=6 if x.dim() == 4 else 9, col_labels=cols, title=title)
    elif labels is not None and len(x) % 8 == 0 and (labels.view(-1, 8) == labels.view(-1, 8)[:, :1]).all():
        save_grid(x, path, nrow=8, row_labels=[f"y={int(c)}" for c in labels[::8]], title=title)
    else:
        save_grid(x, path, nrow=max(8, math.ceil(math.sqrt(len(x)))) if x.dim() == 4 else 4, title=title)


def with_labels(image, cell_w: int, cell_h: int, col_labels: list, row_labels: list, title: str | None = None,
                pad: int = 2):
    """image (cells of cell_w x cell_h after a border of pad) with a white strip above (the title, then one
    label per column) and to the left (one per row). A title wider than the grid takes as many lines as it needs."""
    from PIL import Image, ImageDraw
    left = 8 + 7 * max(len(str(r)) for r in row_labels) if row_labels else 0
    width = image.width + left
    lines = wrap(title, max(10, (width - 4) // 6)) if title else []
    head = 14 * len(lines)
    top = head + (14 if col_labels else 0)
    out = Image.new("RGB", (width, image.height + top), "white")
    out.paste(image.convert("RGB"), (left, top))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((2, 1 + 14 * i), line, fill="black")
    for j, text in enumerate(col_labels):
        draw.text((left + pad + j * cell_w, head + 1), str(text), fill="black")
    for i, text in enumerate(row_labels):
        draw.text((2, top + pad + i * cell_h + cell_h // 2 - 6), str(text), fill="black")
    return out


def wrap(text: str, width: int) -> list:
    """text broken at spaces into lines of at most width characters (a longer word stands alone)."""
    lines = [""]
    for word in text.split():
        lines[-1:] = [lines[-1] + " " + word] if lines[-1] and len(lines[-1]) + 1 + len(word) <= width else \
            ([lines[-1], word] if lines[-1] else [word])
    return lines


def class_grid_labels(num_classes: int, per_row: int = 8) -> Tensor:
    """Labels 0,0,..,1,1,.. so that a grid with nrow=per_row has one row per class."""
    return torch.arange(num_classes).repeat_interleave(per_row)


@torch.no_grad()
def forward_diffusion_grid(model, x0: Tensor, generator=None, columns: int = 11) -> Tensor:
    """Ho et al. eq. (4) made visible: (B, columns, C, H, W), image b at paper t = 0, T/10, ..., T
    (t = 0 is x0 itself), the noise from model.noise_like (Gaussian, or Gamma for DDGM)."""
    B, T = x0.shape[0], model.T
    cols = [x0]
    for j in range(1, columns):
        t = torch.full((B,), round(j * T / (columns - 1)) - 1, dtype=torch.long, device=x0.device)
        cols.append(model.q_sample(x0, t, model.noise_like(x0, t, generator)))
    return torch.stack(cols, dim=1)


def save_forward_diffusion(model, x0: Tensor, path: str, generator=None, columns: int = 11) -> None:
    """One row per training image x0 (B, C, H, W), one column per timestep; volumes (B, C, D, H, W)
    by their axial mid-slice."""
    T = model.T
    labels = ["t=0", *(f"{round(j * T / (columns - 1))}" for j in range(1, columns))]  # "1000" fits a 28-px cell
    grid = forward_diffusion_grid(model, x0, generator, columns=columns).flatten(0, 1)
    grid = axial(grid) if grid.dim() == 5 else grid
    save_grid(grid, path, nrow=columns, col_labels=labels)


def mask_triplets(x: Tensor, masks: Tensor) -> Tensor:
    """For samples x (N, C, H, W) in [-1, 1] and masks (N, 1, H, W) in {0, 1}: (3N, 3, H, W) in
    [-1, 1] ordered mask | generated image | image with the mask outline in red. Volumes: the same
    for each of their three mid-slices (9N images)."""
    if x.dim() == 5:
        x, masks = mid_slices(x), mid_slices(masks)
    image = x.clamp(-1, 1).expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.clamp(-1, 1)
    eroded = -F.max_pool2d(-masks, 3, stride=1, padding=1)
    outline = (masks - eroded) > 0.5                             # (N, 1, H, W)
    red = torch.tensor([1.0, -1.0, -1.0], device=x.device).view(1, 3, 1, 1)
    overlay = torch.where(outline, red, image)
    return torch.stack([(masks * 2 - 1).expand(-1, 3, -1, -1), image, overlay], dim=1).flatten(0, 1)


def pyplot():
    """matplotlib's pyplot with the file-only Agg backend (no screen needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    save_atomic(lambda p: fig.savefig(p, dpi=100, metadata={"Software": mark()}), path, ours_only=True)
    pyplot().close(fig)


def save_loss_curve(losses: list, metrics: list, path: str, ylabel: str = "loss") -> None:
    """Per-step loss (thin) and its running mean over the last 50 steps (bold), log scale; and a second
    panel with fid and fid_real per epoch when metrics (one dict per epoch) hold them."""
    plt = pyplot()
    steps, _, values = zip(*losses)
    window = 50
    running = torch.tensor(values, dtype=torch.float64).cumsum(0)
    running = torch.cat([running[:window] / torch.arange(1, min(window, len(values)) + 1),
                         (running[window:] - running[:-window]) / window]).tolist()
    fids = [m for m in metrics if "fid" in m]
    dices = [m for m in metrics if "mask_dice" in m]
    panels = 1 + bool(fids) + bool(dices)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, values, lw=0.6, alpha=0.5, label="per step")
    ax.plot(steps, running, lw=2, label=f"running mean of the last {window} steps")
    ax.set(xlabel="training step", ylabel=ylabel, yscale="log", title="training loss")
    ax.legend()
    for ax, rows, keys, title, log in ((axes[0, 1] if fids else None, fids, ("fid", "fid_real"), "sample quality",
                                        True),
                                       (axes[0, -1] if dices else None, dices, ("mask_dice", "mask_dice_real"),
                                        "mask adherence (segmenter judge)", False)):
        if not rows:
            continue
        epochs = [m["epoch"] for m in rows]
        shown = [m[k] for m in rows for k in keys if m.get(k) is not None] or [1.0]
        ax.plot(epochs, [m[keys[0]] for m in rows], "o-", label=f"{keys[0]} (samples)")
        ax.plot(epochs, [m.get(keys[1], math.nan) for m in rows], "x--", color="grey",  # a gap where none was scored
                label=f"{keys[1]} (as many real images)")
        wide = log and min(shown) > 0 and max(shown) / min(shown) > 10  # a log axis only where it spans decades
        ax.set(xlabel="epoch", ylabel=keys[0], yscale="log" if wide else "linear", title=title)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if len(epochs) <= 8:
            ax.set_xticks(epochs)                                            # whole epochs, even for one
        else:
            ax.xaxis.set_major_locator(plt.MaxNLocator(8, integer=True))
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())  # 40, not 4 x 10^1
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_schedules(T: int, schedule: str, betas, path: str) -> None:
    """alpha_bar_t and the signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) against t for every
    schedule of ddpm.SCHEDULES (linear: Ho et al. Sec. 4; cosine: Nichol & Dhariwal eq. 17) at this T."""
    from ddpm import SCHEDULES
    plt = pyplot()
    t = range(1, T + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, make in SCHEDULES.items():
        beta = make(T, tuple(betas))
        alpha_bar = torch.cumprod(1 - beta, 0).numpy()
        mine = name == schedule
        style = {"lw": 2.5 if mine else 1.2, "label": f"{name}{' (this run)' if mine else ''}"}
        a1.plot(t, alpha_bar, **style)
        a2.plot(t, alpha_bar / (1 - alpha_bar), **style)
    a1.set(xlabel="t", ylabel="alpha_bar_t", title="signal kept: alpha_bar_t")
    a2.set(xlabel="t", ylabel="SNR(t)", yscale="log", title="signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t)")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_reverse_process(kept: list, x0: Tensor, T: int, path: str, rows: int = 4) -> None:
    """Algorithm 2 (or DDIM) made visible: for the first `rows` samples, x_t at the recorded steps
    and the final x_0 (top row of each pair), and beneath each x_t the network's estimate x0_hat
    (Ho et al. eq. 15). kept: [(index i, x_t, x0_hat)] from DDPM.sample(record=...)."""
    plt = pyplot()
    rows = min(rows, x0.shape[0])
    cols = len(kept) + 1
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.1 * cols, 2.3 * rows), squeeze=False)
    def show(ax, img):  # a volume (C, D, H, W) by its axial mid-slice
        img = unnormalize_to_zero_to_one((img if img.dim() == 3 else axial(img)).float())
        ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    for r in range(rows):
        for c, (i, x_t, x0_hat) in enumerate(kept):
            show(axes[2 * r, c], x_t[r])
            show(axes[2 * r + 1, c], x0_hat[r])
            if r == 0:
                axes[0, c].set_title(f"t={i + 1}", fontsize=8)
        show(axes[2 * r, cols - 1], x0[r].cpu())
        axes[2 * r + 1, cols - 1].axis("off")
        axes[2 * r, 0].set_ylabel("x_t", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("x0_hat", fontsize=8)
    axes[0, cols - 1].set_title("x_0", fontsize=8)
    fig.suptitle(f"reverse process, T = {T}: x_t (upper) and the network's x0_hat, eq. (15) (lower)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def show_image(ax, img: Tensor) -> None:
    """One image (C, H, W) in [-1, 1] on an axis, gray for one channel, no ticks."""
    img = unnormalize_to_zero_to_one(img.float()).clamp(0, 1)
    ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def save_anomaly_figure(scans: Tensor, recs: Tensor, maps: Tensor, masks: Tensor | None, path: str,
                        rows: int = 6) -> None:
    """anomaly.py's figure, one scan per row: scan | reconstruction | anomaly map | scan with the true
    lesion mask outlined (when masks are known). The maps share one colour scale."""
    plt = pyplot()
    rows = min(rows, len(scans))
    cols = 4 if masks is not None else 3
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    top = float(maps[:rows].max()) or 1.0
    for r in range(rows):
        show_image(axes[r, 0], scans[r])
        show_image(axes[r, 1], recs[r])
        axes[r, 2].imshow(maps[r].numpy(), cmap="inferno", vmin=0, vmax=top)
        axes[r, 2].set_xticks([])
        axes[r, 2].set_yticks([])
        if masks is not None:
            show_image(axes[r, 3], scans[r])
            if masks[r].any():
                axes[r, 3].contour(masks[r, 0].numpy(), levels=[0.5], colors="red", linewidths=1)
    for c, title in enumerate(("scan", "reconstruction", "anomaly map", "true lesion")[:cols]):
        axes[0, c].set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def save_anomaly_sweep(rows: list, baselines: dict, T: int, path: str) -> None:
    """AUROC and Dice of the diffusion map against t_lambda (rows: [(t_lambda, {"auroc", "dice"})]),
    with the baselines as horizontal lines: small t_lambda keeps the lesion, large loses the anatomy."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = [r[0] for r in rows]
    for ax, key in zip(axes, ("auroc", "dice")):
        ax.plot(t, [r[1][key] for r in rows], "o-", lw=2, label="diffusion reconstruction")
        for (name, b), style in zip(baselines.items(), ("--", ":")):
            ax.axhline(b[key], ls=style, color="grey", label=f"baseline: {name}")
        ax.set(xlabel=f"t_lambda (of T = {T})", ylabel=key, title=f"pixel {key} on the test scans",
               ylim=(0, 1.02))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
