"""3D (space-time) U-Net for climate clips shaped (batch, variables, frames, lat, lon).

Factorised as in Ho et al. (Video Diffusion Models): convolutions act on space only (1 x 3 x 3),
spatial self-attention within each frame, temporal self-attention across frames at each grid
point with a learned relative-position bias. Conditioning: logsnr through Fourier features and
an MLP; optionally day of year per frame, scalar forcings per frame (greenhouse gases, solar: an MLP
added to the embedding), static fields (orography, land-sea mask: extra input channels, with a channel
saying they are given), boundary fields (sea-surface temperature prescribed at every frame, as in an AMIP run:
extra input channels per frame, with a channel saying they are given) and context frames (given values + mask as extra input channels). Longitude is padded circularly on global grids, latitude by reflection or zeros.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CONDITIONS", "UNet", "UNetConfig", "clip_condition"]

# The network setting that makes it read a clip's entry (as the data loader names it) -> that entry.
CONDITIONS = {"day_of_year": "doy", "static_channels": "static", "forcings": "forcing", "boundary_channels": "boundary"}


@dataclass
class UNetConfig:
    """Network sizes. ``channels`` is the number of variables (x levels) in a clip."""

    channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    heads: int = 4
    dropout: float = 0.0
    periodic_lon: bool = True
    lat_padding: Literal["reflect", "zeros"] = "reflect"
    context_frames: bool = False
    day_of_year: bool = False
    static_channels: int = 0  # static fields given as input channels (cond["static"])
    forcings: int = 0  # scalar forcing series given per frame (cond["forcing"])
    boundary_channels: int = 0  # gridded fields given at every frame, never generated (cond["boundary"])
    max_frames: int = 64
    fourier_features: int = 16
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        checks = {
            "channels": self.channels >= 1,
            "base_channels": self.base_channels >= 1,
            "channel_mults": len(self.channel_mults) >= 1 and min(self.channel_mults) >= 1,
            "num_res_blocks": self.num_res_blocks >= 1,
            "heads": self.heads >= 1,
            "attention_levels": all(0 <= a < len(self.channel_mults) for a in self.attention_levels),
            "lat_padding": self.lat_padding in ("reflect", "zeros"),
            "max_frames": self.max_frames >= 1,
            "static_channels": self.static_channels >= 0,
            "boundary_channels": self.boundary_channels >= 0,
            "forcings": self.forcings >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                msg = f"model.{key} = {getattr(self, key)!r} is not valid"
                raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        return d


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)


def pad_spatial(x: Tensor, pad: int, periodic_lon: bool, lat_padding: str) -> Tensor:
    """Pad the last two dims (lat, lon) of a 5-D tensor by ``pad`` on each side."""
    if pad == 0:
        return x
    x = F.pad(x, (pad, pad, 0, 0, 0, 0), mode="circular" if periodic_lon else "replicate")
    if lat_padding == "reflect":
        return F.pad(x, (0, 0, pad, pad, 0, 0), mode="reflect")
    return F.pad(x, (0, 0, pad, pad, 0, 0))


class SpatialConv(nn.Module):
    """Conv3d with a (1, k, k) kernel and climate-aware padding."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, stride: int = 1, k: int = 3):
        super().__init__()
        self.cfg = cfg
        self.pad = k // 2
        self.conv = nn.Conv3d(cin, cout, (1, k, k), stride=(1, stride, stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_spatial(x, self.pad, self.cfg.periodic_lon, self.cfg.lat_padding))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = SpatialConv(cin, cout, cfg)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(cfg.dropout)
        self.conv2 = SpatialConv(cout, cout, cfg)
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb).permute(0, 2, 1)[..., None, None].chunk(2, dim=1)  # (B, C, T, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Self-attention over the grid points of each frame."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q, k, v = self.qkv(y).reshape(b * t, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * t, h * w, c)
        y = self.proj(y).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + y


class TemporalAttention(nn.Module):
    """Self-attention over frames at each grid point, with a learned relative-position bias."""

    def __init__(self, ch: int, heads: int, max_frames: int):
        super().__init__()
        self.heads = heads
        self.max_frames = max_frames
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        if t > self.max_frames:
            msg = f"clip has {t} frames, more than model.max_frames = {self.max_frames}"
            raise ValueError(msg)
        y = self.norm(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        q, k, v = self.qkv(y).reshape(b * h * w, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        idx = torch.arange(t, device=x.device)
        bias = self.rel_bias[:, idx[None, :] - idx[:, None] + self.max_frames - 1].to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b * h * w, t, c)
        y = self.proj(y).reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x + y


class Block(nn.Module):
    """ResBlock, then optional spatial attention, then temporal attention."""

    def __init__(self, cin: int, cout: int, emb: int, cfg: UNetConfig, spatial_attention: bool):
        super().__init__()
        heads = math.gcd(cfg.heads, cout)
        self.res = ResBlock(cin, cout, emb, cfg)
        self.sattn = SpatialAttention(cout, heads) if spatial_attention else None
        self.tattn = TemporalAttention(cout, heads, cfg.max_frames)
        self.use_checkpoint = cfg.gradient_checkpointing

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.sattn is not None:
            x = self.sattn(x)
        return self.tattn(x)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


def fourier_features(x: Tensor, n: int, min_period: float = 0.25, max_period: float = 120.0) -> Tensor:
    """sin/cos of ``x`` at ``n`` periods spaced geometrically; logsnr in [-30, 30] is covered."""
    periods = torch.exp(torch.linspace(math.log(max_period), math.log(min_period), n, device=x.device))
    ang = 2 * math.pi * x.float()[..., None] / periods
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class UNet(nn.Module):
    """``net(z, logsnr, cond) -> v`` for z of shape (B, C, T, lat, lon).

    ``cond`` (optional dict): ``"doy"`` (B, T) day of year when ``cfg.day_of_year``;
    ``"static"`` (B or 1, S, lat, lon) when ``cfg.static_channels = S``; ``"forcing"`` (B, T, F) when
    ``cfg.forcings = F``; ``"boundary"`` (B, K, T, lat, lon) when ``cfg.boundary_channels = K``; ``"context"`` (B, C, T, lat, lon) and ``"context_mask"`` (B or 1, 1, T, 1, 1) when
    ``cfg.context_frames``. ``cond=None`` is the unconditional model (for classifier-free guidance);
    ``"drop"`` (B,) bool marks the items to treat as ``cond=None`` (conditioning dropout, see
    :func:`pipeline.diffusion.guidance.drop_condition`).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch0 = cfg.base_channels
        emb = 4 * ch0
        self.emb_mlp = nn.Sequential(nn.Linear(2 * cfg.fourier_features, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.doy_mlp = nn.Sequential(nn.Linear(8, emb), nn.SiLU(), nn.Linear(emb, emb)) if cfg.day_of_year else None
        self.forcing_mlp = (
            nn.Sequential(nn.Linear(cfg.forcings, emb), nn.SiLU(), nn.Linear(emb, emb)) if cfg.forcings else None
        )
        cin = cfg.channels * (2 if cfg.context_frames else 1) + (1 if cfg.context_frames else 0)
        cin += cfg.static_channels + 1 if cfg.static_channels else 0  # the fields and a "given" channel
        cin += cfg.boundary_channels + 1 if cfg.boundary_channels else 0  # the same, per frame
        self.conv_in = SpatialConv(cin, ch0, cfg)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        chans = [ch0]
        ch = ch0
        for level, mult in enumerate(cfg.channel_mults):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(Block(ch, ch0 * mult, emb, cfg, level in cfg.attention_levels))
                ch = ch0 * mult
                chans.append(ch)
            self.down.append(blocks)
            last = level == len(cfg.channel_mults) - 1
            self.downsample.append(nn.Identity() if last else SpatialConv(ch, ch, cfg, stride=2))
            if not last:
                chans.append(ch)
        self.mid = nn.ModuleList([Block(ch, ch, emb, cfg, True), Block(ch, ch, emb, cfg, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(Block(ch + chans.pop(), ch0 * mult, emb, cfg, level in cfg.attention_levels))
                ch = ch0 * mult
            self.up.append(blocks)
            self.upsample.append(SpatialConv(ch, ch, cfg) if level > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = SpatialConv(ch, cfg.channels, cfg)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    @property
    def multiple(self) -> int:
        """Grid sizes are padded to a multiple of this (2 per downsampling)."""
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def _inputs(self, z: Tensor, cond: dict[str, Any] | None) -> Tensor:
        parts = [z]
        if self.cfg.context_frames:
            if cond is not None and "context" in cond:
                mask = cond["context_mask"].to(z.dtype).expand(z.shape[0], 1, *z.shape[2:]) * self._keep(cond, z)
                ctx = cond["context"].to(z.dtype) * mask
            else:
                mask = torch.zeros(z.shape[0], 1, *z.shape[2:], dtype=z.dtype, device=z.device)
                ctx = torch.zeros_like(z)
            parts += [ctx, mask]
        if self.cfg.static_channels:
            parts.append(self._static(z, cond))
        if self.cfg.boundary_channels:
            parts.append(self._boundary(z, cond))
        return torch.cat(parts, dim=1) if len(parts) > 1 else z

    def _static(self, z: Tensor, cond: dict[str, Any] | None) -> Tensor:
        """The static fields repeated over the frames, and a channel of ones where they are given: zeros for an item
        without them (``cond=None`` or dropped), so "no static fields" is not read as fields equal to 0."""
        b, _, t, h, w = z.shape
        s = self.cfg.static_channels
        if cond is None or "static" not in cond:
            return torch.zeros(b, s + 1, t, h, w, dtype=z.dtype, device=z.device)
        fields = cond["static"].to(z.dtype)
        if fields.ndim != 4 or fields.shape[1:] != (s, h, w):
            msg = f"cond['static'] must be (batch or 1, {s}, {h}, {w}), got {tuple(fields.shape)}"
            raise ValueError(msg)
        given = torch.cat([fields, torch.ones_like(fields[:, :1])], dim=1).expand(b, -1, -1, -1)
        return (given * self._keep(cond, given))[:, :, None].expand(-1, -1, t, -1, -1)

    def _boundary(self, z: Tensor, cond: dict[str, Any] | None) -> Tensor:
        """The boundary fields of each frame and a channel of ones where they are given (zeros without them, as
        for the static fields)."""
        b, _, t, h, w = z.shape
        k = self.cfg.boundary_channels
        if cond is None or "boundary" not in cond:
            return torch.zeros(b, k + 1, t, h, w, dtype=z.dtype, device=z.device)
        fields = cond["boundary"].to(z.dtype)
        if fields.shape != (b, k, t, h, w):
            msg = f"cond['boundary'] must be (batch, {k}, {t}, {h}, {w}), got {tuple(fields.shape)}"
            raise ValueError(msg)
        given = torch.cat([fields, torch.ones_like(fields[:, :1])], dim=1)
        return given * self._keep(cond, given)

    def _embedding(self, logsnr: Tensor, frames: int, cond: dict[str, Any] | None) -> Tensor:
        e = self.emb_mlp(fourier_features(logsnr, self.cfg.fourier_features))[:, None, :].expand(-1, frames, -1)
        if self.doy_mlp is not None and cond is not None and "doy" in cond:
            doy = cond["doy"].float()
            k = torch.arange(1, 5, device=doy.device, dtype=torch.float32)
            ang = 2 * math.pi * doy[..., None] * k / 365.25
            e = e + self.doy_mlp(torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)) * self._keep(cond, e)
        if self.forcing_mlp is not None and cond is not None and "forcing" in cond:
            f = cond["forcing"].float()
            if f.ndim != 3 or f.shape[1:] != (frames, self.cfg.forcings):
                msg = f"cond['forcing'] must be (batch, {frames}, {self.cfg.forcings}), got {tuple(f.shape)}"
                raise ValueError(msg)
            e = e + self.forcing_mlp(f) * self._keep(cond, e)
        return e

    @staticmethod
    def _keep(cond: dict[str, Any], like: Tensor) -> Tensor | float:
        """0 for the items that ``cond["drop"]`` (conditioning dropout) marks unconditional, else 1, shaped
        to broadcast against ``like`` (batch first): those items get exactly the ``cond=None`` output."""
        if "drop" not in cond:
            return 1.0
        keep = (~cond["drop"].to(device=like.device, dtype=torch.bool)).to(like.dtype)
        return keep.reshape(-1, *([1] * (like.ndim - 1)))

    def forward(self, z: Tensor, logsnr: Tensor, cond: dict[str, Any] | None = None) -> Tensor:
        if z.ndim != 5 or z.shape[1] != self.cfg.channels:
            msg = f"expected z of shape (batch, {self.cfg.channels}, frames, lat, lon), got {tuple(z.shape)}"
            raise ValueError(msg)
        b, _, t, h, w = z.shape
        if cond is not None:  # cond=None is the unconditional model; a condition without an input it needs is a bug
            missing = [
                k for s, k in CONDITIONS.items() if s != "day_of_year" and getattr(self.cfg, s) and k not in cond
            ]
            if missing:
                msg = f"the network is conditioned on {missing} (static/boundary fields, forcings), the condition has only "
                msg += f"{sorted(cond)}: give them, or cond=None for the unconditional model"
                raise ValueError(msg)
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        x = self._inputs(z, cond)
        if ph or pw:  # pad to a multiple of the downsampling factor, cropped again at the end
            x = F.pad(x, (0, pw, 0, 0, 0, 0), mode="circular" if self.cfg.periodic_lon else "replicate")
            x = F.pad(x, (0, 0, 0, ph, 0, 0), mode="replicate")
        emb = self._embedding(logsnr.reshape(b), t, cond).to(x.dtype)
        x = self.conv_in(x)
        skips = [x]
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for blk in blocks:
                x = blk(x, emb)
                skips.append(x)
            if not isinstance(down, nn.Identity):
                x = down(x)
                skips.append(x)
        for blk in self.mid:
            x = blk(x, emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for blk in blocks:
                x = blk(torch.cat([x, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                x = up(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))
        x = self.conv_out(F.silu(self.norm_out(x)))
        return x[..., :h, :w]


def clip_condition(
    clip: dict[str, Any], model_cfg: dict[str, Any], device: torch.device | str, batched: bool = True
) -> dict[str, Tensor] | None:
    """The condition a network of ``model_cfg`` (``UNetConfig`` fields) reads from a clip of the data loader (a
    batch of clips; one clip with ``batched=False``): its day of year, static fields, forcings and boundary
    fields, those the network was built for; ``None`` where it reads none. One place, so training, validation, evaluation and
    distillation give the network the same inputs."""
    cond = {}
    for setting, key in CONDITIONS.items():
        if model_cfg.get(setting):
            if key not in clip:
                msg = f"the network reads {key!r} (model setting {setting}) but the clip has only {sorted(clip)}"
                raise KeyError(msg)
            value = clip[key] if batched else clip[key][None]
            cond[key] = value.to(device)
    return cond or None
