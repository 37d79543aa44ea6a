"""Noise-prediction networks eps_theta(x_t, t): the coursework CNN and a compact U-Net.

Both take x_t (B, C, H, W), timestep indices t (B,) (index i is the paper's t = i + 1, see
ddpm.py) and two optional conditions used by the conditional model (cond.py):
- y (B,) class labels, embedded and added to the time embedding; label num_classes is the
  "null" class of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598);
- mask (B, cond_channels, H, W), concatenated to x_t as extra input channels, never noised.
The U-Net follows Ho et al. 2020 (arXiv:2006.11239) Appendix B in miniature: sinusoidal
timestep embedding (Vaswani et al. 2017, arXiv:1706.03762, Sec. 3.5), residual blocks with
the embedding added, self-attention at the lowest resolution.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Vaswani et al. Sec. 3.5: [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (dim/2)). (B,) -> (B, dim)."""
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * w[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


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
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match images of shape "
                         f"{tuple(x_t.shape)}: masks must be (B, {cond_channels}, H, W) like x_t")
    return torch.cat([x_t, mask.to(x_t.dtype)], dim=1)


class CNN(nn.Module):
    """The coursework denoiser: blocks of (7x7 conv, GroupNorm, GELU) with hidden channels
    (16, 32, 32, 16), the time embedding added after every block, and a 3x3 output conv."""

    def __init__(self, in_channels: int = 1, hidden: tuple = (16, 32, 32, 16), emb_dim: int = 64,
                 num_classes: int = 0, cond_channels: int = 0):
        super().__init__()
        self.cond_channels = cond_channels
        self.embed = Embedding(emb_dim, num_classes)
        widths = (in_channels + cond_channels, *hidden)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 7, padding=3) for a, b in zip(widths, hidden))
        self.norms = nn.ModuleList(group_norm(c) for c in hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, c) for c in hidden)
        self.out = nn.Conv2d(hidden[-1], in_channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        emb = self.embed(t, y)                                   # (B, emb_dim)
        h = concat_condition(x_t, mask, self.cond_channels)
        for conv, norm, proj in zip(self.convs, self.norms, self.emb_proj):
            h = F.gelu(norm(conv(h))) + proj(emb)[:, :, None, None]  # after the norm, which would remove it
        return self.out(h)


class ResBlock(nn.Module):
    """GroupNorm, GELU, 3x3 conv, + time embedding, GroupNorm, GELU, 3x3 conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.gelu(self.norm1(x))) + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(F.gelu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape  # batch, channels, height, width
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)             # (B, H*W, C)
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """A U-Net whose depth follows its widths: widths (c1, ..., cn) give n - 1 down/up levels with
    skips, H -> H/2 -> ... -> H/2^(n-1) and back, for H, W divisible by 2^(n-1); c_k channels at
    H/2^(k-1). Self-attention at the deepest resolution (attention=True) and at every resolution
    listed in attention_res (feature-map sides in pixels, e.g. (16,) at 64 px). Three widths give
    the two-level net of earlier versions, with the same parameter names (down1, pool1, ...)."""

    def __init__(self, in_channels: int = 1, widths: tuple = (32, 64, 64), attention: bool = True,
                 num_classes: int = 0, cond_channels: int = 0, image_size: int | None = None,
                 attention_res: tuple = ()):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet needs at least two widths (one level), got {widths}")
        self.levels, emb_dim = len(widths) - 1, 4 * widths[0]
        self.cond_channels = cond_channels
        attend = lambda k: image_size is not None and image_size // 2 ** (k - 1) in attention_res  # noqa: E731
        self.embed = Embedding(emb_dim, num_classes)
        self.inp = nn.Conv2d(in_channels + cond_channels, widths[0], 3, padding=1)
        c = widths[0]
        for k in range(1, self.levels + 1):  # encoder level k works at H / 2^(k-1)
            setattr(self, f"down{k}", ResBlock(c, widths[k - 1], emb_dim))
            if attend(k):
                setattr(self, f"attn_down{k}", SelfAttention(widths[k - 1]))
            setattr(self, f"pool{k}", nn.Conv2d(widths[k - 1], widths[k - 1], 3, stride=2, padding=1))
            c = widths[k - 1]
        self.mid1 = ResBlock(c, widths[-1], emb_dim)
        self.attn = SelfAttention(widths[-1]) if attention else nn.Identity()
        self.mid2 = ResBlock(widths[-1], widths[-1], emb_dim)
        c = widths[-1]
        for k in range(self.levels, 0, -1):  # decoder level k, back up to H / 2^(k-1)
            setattr(self, f"up{k}", nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1)))
            setattr(self, f"dec{k}", ResBlock(c + widths[k - 1], widths[k - 1], emb_dim))
            if attend(k):
                setattr(self, f"attn_dec{k}", SelfAttention(widths[k - 1]))
            c = widths[k - 1]
        self.out = nn.Sequential(group_norm(c), nn.GELU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def level(self, name: str, k: int):
        """The module f"{name}{k}", or identity where that level has none (attention)."""
        return getattr(self, f"{name}{k}", nn.Identity())

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x_t.shape  # batch, channels, height, width
        if H % 2 ** self.levels or W % 2 ** self.levels:
            raise ValueError(f"this UNet ({self.levels} levels) needs height and width divisible by "
                             f"{2 ** self.levels}, got {H}x{W}")
        emb = self.embed(t, y)                                   # (B, emb_dim)
        h = self.inp(concat_condition(x_t, mask, self.cond_channels))
        skips = []
        for k in range(1, self.levels + 1):
            h = self.level("attn_down", k)(self.level("down", k)(h, emb))  # (B, c_k, H/2^(k-1), W/2^(k-1))
            skips.append(h)
            h = self.level("pool", k)(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)         # (B, c_n, H/2^(n-1), W/2^(n-1))
        for k in range(self.levels, 0, -1):
            h = self.level("dec", k)(torch.cat([self.level("up", k)(h), skips.pop()], dim=1), emb)
            h = self.level("attn_dec", k)(h)                     # (B, c_k, H/2^(k-1), W/2^(k-1))
        return self.out(h)


def unet_from_config(config: dict) -> UNet:
    """The widths of the config; checkpoints from before --unet-widths existed used (32, 64, 64)."""
    return UNet(config["in_channels"], tuple(config.get("unet_widths", (32, 64, 64))),
                num_classes=config["num_classes"], cond_channels=config["cond_channels"],
                image_size=config["image_size"], attention_res=tuple(config.get("attention_res", ())))


def cnn_from_config(config: dict) -> CNN:
    return CNN(config["in_channels"], num_classes=config["num_classes"], cond_channels=config["cond_channels"])


# Networks by name: f(config) -> eps_model. config holds in_channels, image_size, num_classes, cond_channels
# and the network's own options (unet_widths, attention_res). A new one is a class, a function and a line here.
NETWORKS = {"unet": unet_from_config, "cnn": cnn_from_config}
