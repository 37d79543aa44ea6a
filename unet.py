"""Noise-prediction networks eps_theta(x_t, t): the coursework CNN and a compact U-Net.

Both take x_t (B, C, H, W) (volumes, dims=3: (B, C, D, H, W)), timestep indices t (B,) (index i
is the paper's t = i + 1, see ddpm.py) and two optional conditions used by the conditional model (cond.py):
- y (B,) class labels, embedded and added to the time embedding; label num_classes is the
  "null" class of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598);
- mask (B, cond_channels, H, W), concatenated to x_t as extra input channels, never noised.
The U-Net follows Ho et al. 2020 (arXiv:2006.11239) Appendix B in miniature: sinusoidal
timestep embedding (Vaswani et al. 2017, arXiv:1706.03762, Sec. 3.5), residual blocks with
the embedding added, self-attention at the lowest resolution.
"""
import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Vaswani et al. Sec. 3.5: [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (dim/2)). (B,) -> (B, dim)."""
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * w[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def conv(dims: int, *args, **kwargs) -> nn.Module:
    """Conv2d for images (dims 2), Conv3d for volumes (dims 3): the same network in either."""
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(*args, **kwargs)


def per_channel(v: Tensor, dims: int) -> Tensor:
    """(B, C) -> (B, C, 1, ..., 1), to add to feature maps of `dims` spatial dimensions."""
    return v.view(*v.shape, *[1] * dims)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Embedding(nn.Module):
    """Timestep embedding (sinusoidal -> MLP), plus a learned class embedding when num_classes > 0."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.mlp(sinusoidal_embedding(t, self.dim))
        if self.class_emb is None:
            if y is not None:
                raise ValueError("this network was built without classes (num_classes=0)")
            return emb
        if y is None:  # unconditional call: the null class
            y = torch.full_like(t, self.num_classes)
        return emb + self.class_emb(y)


def concat_condition(x_t: Tensor, mask: Tensor | None, cond_channels: int) -> Tensor:
    """[x_t, mask] along channels; the mask is the condition and is never noised."""
    if cond_channels == 0:
        if mask is not None:
            raise ValueError("this network was built without mask channels (cond_channels=0)")
        return x_t
    if mask is None:
        raise ValueError(f"this network needs a mask with {cond_channels} channel(s)")
    if mask.shape[0] != x_t.shape[0] or mask.shape[1:] != (cond_channels, *x_t.shape[2:]):
        sides = "H, W" if x_t.dim() == 4 else "D, H, W"
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match images of shape "
                         f"{tuple(x_t.shape)}: masks must be (B, {cond_channels}, {sides}) like x_t")
    return torch.cat([x_t, mask.to(x_t.dtype)], dim=1)


class CNN(nn.Module):
    """The coursework denoiser: blocks of (7x7 conv, GroupNorm, GELU) with hidden channels
    (16, 32, 32, 16), the time embedding added after every block, and a 3x3 output conv.
    dims=3: volumes, with 7x7x7 and 3x3x3 convolutions."""

    def __init__(self, in_channels: int = 1, hidden: tuple = (16, 32, 32, 16), emb_dim: int = 64,
                 num_classes: int = 0, cond_channels: int = 0, dims: int = 2):
        super().__init__()
        self.cond_channels, self.dims = cond_channels, dims
        self.embed = Embedding(emb_dim, num_classes)
        widths = (in_channels + cond_channels, *hidden)
        self.convs = nn.ModuleList(conv(dims, a, b, 7, padding=3) for a, b in zip(widths, hidden))
        self.norms = nn.ModuleList(group_norm(c) for c in hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, c) for c in hidden)
        self.out = conv(dims, hidden[-1], in_channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        emb = self.embed(t, y)                                   # (B, emb_dim)
        h = concat_condition(x_t, mask, self.cond_channels)
        for layer, norm, proj in zip(self.convs, self.norms, self.emb_proj):
            h = F.gelu(norm(layer(h))) + per_channel(proj(emb), self.dims)  # after the norm, which would remove it
        return self.out(h)


ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}  # modules without weights: a checkpoint does not name them


class ResBlock(nn.Module):
    """GroupNorm, activation, 3x3 conv, + time embedding, GroupNorm, activation, 3x3 conv, + skip (3x3x3 for
    volumes). scale_shift: the embedding scales and shifts the second normalisation instead of being added
    (AdaGN, Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 3: y_s GroupNorm(h) + y_b; here y_s = 1 + e_s, as
    in their released code, so that e = 0 leaves the norm as it is). zero_init: the last conv starts at zero,
    so that the block starts as the identity (as improved-diffusion and MONAI initialise it)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dims: int = 2, act: str = "gelu",
                 scale_shift: bool = False, zero_init: bool = False):
        super().__init__()
        self.dims, self.act, self.scale_shift = dims, ACTIVATIONS[act](), scale_shift
        self.norm1, self.conv1 = group_norm(c_in), conv(dims, c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2, self.conv2 = group_norm(c_out), conv(dims, c_out, c_out, 3, padding=1)
        self.skip = conv(dims, c_in, c_out, 1) if c_in != c_out else nn.Identity()
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        e = per_channel(self.emb_proj(emb), self.dims)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift              # AdaGN, Dhariwal & Nichol Sec. 3
        else:
            h = self.norm2(h + e)
        return self.conv2(self.act(h)) + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W (volumes: D*H*W) positions, with a residual connection."""

    def __init__(self, channels: int, dims: int = 2, zero_init: bool = False):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = conv(dims, channels, 3 * channels, 1)
        self.proj = conv(dims, channels, channels, 1)
        if zero_init:  # starts as the identity
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]  # batch, channels; then H, W (or D, H, W)
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, -1).transpose(2, 3).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)             # (B, positions, C)
        return x + self.proj(h.transpose(1, 2).reshape(x.shape))


class UNet(nn.Module):
    """A U-Net whose depth follows its widths: widths (c1, ..., cn) give n - 1 down/up levels with
    skips, H -> H/2 -> ... -> H/2^(n-1) and back, for H, W divisible by 2^(n-1); c_k channels at
    H/2^(k-1). Self-attention at the deepest resolution (attention=True) and at every resolution
    listed in attention_res (feature-map sides in pixels, e.g. (16,) at 64 px). The modules of level k
    are down[k - 1], attn_down[k - 1] (identity without attention), pool[k - 1], up[k - 1], dec[k - 1].
    dims=3: the same network on volumes (B, C, D, H, W), with 3D convolutions, pooling and attention."""

    def __init__(self, in_channels: int = 1, widths: tuple = (32, 64, 64), attention: bool = True,
                 num_classes: int = 0, cond_channels: int = 0, image_size: int | None = None,
                 attention_res: tuple = (), dims: int = 2, act: str = "gelu", scale_shift: bool = False,
                 zero_init: bool = False, skip_every: bool = False, emb_mult: int = 4):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet needs at least two widths (one level), got {widths}")
        if dims not in (2, 3):
            raise ValueError(f"UNet works on images (dims 2) or volumes (dims 3), not dims {dims}")
        self.levels, emb_dim, self.dims = len(widths) - 1, emb_mult * widths[0], dims
        if image_size is not None and image_size % 2 ** self.levels:
            raise ValueError(f"this U-Net ({self.levels} levels) needs image sides divisible by {2 ** self.levels}, "
                             f"got {image_size}: set --image-size or give fewer --unet-widths")
        sides = [image_size // 2 ** k for k in range(self.levels + 1)] if image_size else []  # the last: attention
        if image_size is not None and not set(attention_res) <= set(sides):
            raise ValueError(f"--attention-res {' '.join(map(str, attention_res))}: this U-Net's feature maps are "
                             f"{', '.join(map(str, sides))} px wide; choose among them")
        self.cond_channels, self.skip_every = cond_channels, skip_every
        attend = lambda k: image_size is not None and image_size // 2 ** (k - 1) in attention_res  # noqa: E731
        def block(a, b):
            return ResBlock(a, b, emb_dim, dims=dims, act=act, scale_shift=scale_shift, zero_init=zero_init)
        attention_block = lambda c: SelfAttention(c, dims, zero_init)  # noqa: E731
        self.embed = Embedding(emb_dim, num_classes)
        self.inp = conv(dims, in_channels + cond_channels, widths[0], 3, padding=1)
        self.down, self.attn_down, self.pool = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()  # [k - 1]: level k
        c = widths[0]
        for k in range(1, self.levels + 1):  # encoder level k works at H / 2^(k-1)
            self.down.append(block(c, widths[k - 1]))
            self.attn_down.append(attention_block(widths[k - 1]) if attend(k) else nn.Identity())
            self.pool.append(conv(dims, widths[k - 1], widths[k - 1], 3, stride=2, padding=1))
            c = widths[k - 1]
        self.mid1 = block(c, widths[-1])
        self.attn = attention_block(widths[-1]) if attention else nn.Identity()
        self.mid2 = block(widths[-1], widths[-1])
        if skip_every:  # the deepest pooled map is a skip too, taken before the first upsampling
            self.dec_mid = block(widths[-1] + widths[-2], widths[-1])
        self.up, self.dec, self.attn_dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()  # [k - 1]: level k
        self.dec_skip = nn.ModuleList()  # skip_every: the second block of each decoder level
        c = widths[-1]
        for k in range(self.levels, 0, -1):  # decoder level k, back up to H / 2^(k-1)
            self.up.insert(0, nn.Sequential(nn.Upsample(scale_factor=2), conv(dims, c, c, 3, padding=1)))
            self.dec.insert(0, block(c + widths[k - 1], widths[k - 1]))
            if skip_every:  # the skip of the level above's pooled map, or of the input conv at level 1
                self.dec_skip.insert(0, block(widths[k - 1] + widths[max(k - 2, 0)], widths[k - 1]))
            self.attn_dec.insert(0, attention_block(widths[k - 1]) if attend(k) else nn.Identity())
            c = widths[k - 1]
        self.out = nn.Sequential(group_norm(c), ACTIVATIONS[act](), conv(dims, c, in_channels, 3, padding=1))
        if zero_init:  # the network starts by predicting eps = 0
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def renamed_levels(weights: dict) -> dict:
        """A state dict from before the levels were lists (down1.conv1.weight -> down.0.conv1.weight, ...),
        so that older checkpoints load (plumbing.checkpoints.load_weights calls this)."""
        old = re.compile(r"(down|attn_down|pool|up|dec|attn_dec)(\d+)\.")
        return {old.sub(lambda m: f"{m[1]}.{int(m[2]) - 1}.", k, count=1) if old.match(k) else k: v
                for k, v in weights.items()}

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        sides = x_t.shape[2:]  # H, W (volumes: D, H, W)
        if x_t.dim() != self.dims + 2 or any(side % 2 ** self.levels for side in sides):
            raise ValueError(f"this UNet ({self.dims}D, {self.levels} levels) needs (B, C, {'D, ' * (self.dims == 3)}"
                             f"H, W) with sides divisible by {2 ** self.levels}, got {tuple(x_t.shape)}")
        emb = self.embed(t, y)                                   # (B, emb_dim)
        h = self.inp(concat_condition(x_t, mask, self.cond_channels))
        skips = [h] if self.skip_every else []
        for down, attn, pool in zip(self.down, self.attn_down, self.pool):  # level k = 1, ..., n - 1
            h = attn(down(h, emb))                               # (B, c_k, H/2^(k-1), W/2^(k-1))
            skips.append(h)
            h = pool(h)
            if self.skip_every:
                skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)         # (B, c_n, H/2^(n-1), W/2^(n-1))
        if self.skip_every:
            h = self.dec_mid(torch.cat([h, skips.pop()], dim=1), emb)
        for k in range(self.levels, 0, -1):                      # level k = n - 1, ..., 1
            h = self.dec[k - 1](torch.cat([self.up[k - 1](h), skips.pop()], dim=1), emb)
            if self.skip_every:
                h = self.dec_skip[k - 1](torch.cat([h, skips.pop()], dim=1), emb)
            h = self.attn_dec[k - 1](h)                          # (B, c_k, H/2^(k-1), W/2^(k-1))
        return self.out(h)


# The U-Net's design by version, as a run's config records it (unet_version): 1 is the first design (GELU, the
# embedding added, default initialisation), which every checkpoint without the key has; 2 starts every residual
# block and the output at zero, lets the embedding scale and shift the normalisation (AdaGN) and uses SiLU: the
# changes that paid most per training image at no cost in time (docs/quality.md, python -m bench.ablate).
# A new design is a new version.
VERSIONS = {1: {}, 2: {"zero_init": True, "scale_shift": True, "act": "silu"}}


def unet_from_config(config: dict) -> UNet:
    """The widths of the config (checkpoints from before --unet-widths existed used (32, 64, 64)), in the
    design of its unet_version (1 where it has none). config["dims"] 3 (volumes) builds the 3D U-Net."""
    return UNet(config["in_channels"], tuple(config.get("unet_widths", (32, 64, 64))),
                num_classes=config["num_classes"], cond_channels=config["cond_channels"],
                image_size=config["image_size"], attention_res=tuple(config.get("attention_res", ())),
                dims=config.get("dims", 2), **VERSIONS[config.get("unet_version", 1)])


def cnn_from_config(config: dict) -> CNN:
    return CNN(config["in_channels"], num_classes=config["num_classes"], cond_channels=config["cond_channels"],
               dims=config.get("dims", 2))


# Networks by name: f(config) -> net. config holds in_channels, image_size, num_classes, cond_channels,
# dims (2 images, 3 volumes) and the network's own options (unet_widths, attention_res). A new one is a class,
# a function and a line here.
NETWORKS = {"unet": unet_from_config, "cnn": cnn_from_config}
