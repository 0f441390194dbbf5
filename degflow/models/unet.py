"""Time-conditioned velocity U-Net (stage 2 of DegFlow).

``VelocityUNet(z [B, C, h, w], t [B] in [0, 1]) -> velocity [B, C, h, w]``.

The paper preset computes the same function as the authors' NCSN++ configuration
(``resblock_type='biggan'``, ``fir=False``, ``skip_rescale=True``, ``conditional=True``,
positional time embedding fed with ``999 * t``, ``progressive='none'``,
``progressive_input='none'``, ``init_scale=0``, ``scale_by_sigma=False``,
``centered=True``); names of layers differ, the order of operations does not:

- time embedding: sinusoidal features of ``time_embedding_scale * t`` (``nf`` wide, sin
  half then cos half, frequencies ``10000 ** (-i / (nf/2 - 1))``), then
  ``Linear(nf, 4nf) -> SiLU -> Linear(4nf, 4nf)``;
- ``conv_in`` conv3x3 ``C -> nf``;
- down path, per level: ``num_res_blocks`` residual blocks (each followed by self-attention
  if the level's training resolution is in ``attn_resolutions``), then (except at the last
  level) a residual block that downsamples by 2x2 average pooling; every output is kept as
  a skip;
- middle: residual block, self-attention (``mid_attention``; the authors' NCSN++ always has
  it, whatever ``attn_resolutions`` says), residual block;
- up path, per level (coarse to fine): ``num_res_blocks + 1`` residual blocks on
  ``cat([h, skip])``, one self-attention if the level is in ``attn_resolutions``, then
  (except at the finest level) a residual block that upsamples by nearest-neighbour x2;
- ``GroupNorm -> SiLU -> conv3x3 nf -> C`` (initialised at ~0: the initial velocity is tiny).

Residual block (BigGAN-style, "ResnetBlockBigGANpp" without FIR):
``h = SiLU(GN(x))``; resample ``h`` and ``x`` if up/down; ``h = conv3x3(h) +
Linear(SiLU(temb))``; ``h = conv3x3(Dropout(SiLU(GN(h))))`` (second conv initialised at
~0); ``x = conv1x1(x)`` when the width changes or the block resamples; output
``(x + h) / sqrt(2)`` (``skip_rescale``). GroupNorm uses ``min(channels // 4, 32)`` groups and
eps 1e-6. The authors' ``fir=False`` resampling is exactly nearest/average pooling, so no
FIR (upfirdn2d CUDA) op is needed and the network runs anywhere.

Initialisation follows the authors (DDPM "variance scaling, fan_avg, uniform", i.e.
Xavier-uniform with gain ``sqrt(scale)``, zero biases; ``init_scale=0`` means scale 1e-10
for the second conv of every block, the attention output and the output conv).

The latent spatial size must be divisible by ``2 ** (len(ch_mult) - 1)`` (8 for the paper
preset); synthesis pads the latent (or the image) before calling.

The authors' released flow weights load into the paper preset by renaming alone
(:func:`degflow.models.official.velocity_key_map`, ``python -m degflow.convert_official``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from degflow.infra.checks import check_int

__all__ = ["VelocityUNet", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B] -> [B, dim]``: ``[sin(t f_i), cos(t f_i)]``,
    ``f_i = max_period ** (-i / (dim/2 - 1))`` for ``i < dim/2``; odd ``dim`` is zero-padded."""
    half = dim // 2
    exponent = -math.log(max_period) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * exponent)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _init_(weight: torch.Tensor, scale: float = 1.0) -> None:
    """DDPM variance-scaling init (fan_avg, uniform) == Xavier-uniform with gain sqrt(scale)."""
    scale = 1e-10 if scale == 0 else scale
    nn.init.xavier_uniform_(weight, gain=math.sqrt(scale))


def _conv(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    _init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_f: int, out_f: int) -> nn.Linear:
    lin = nn.Linear(in_f, out_f)
    _init_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:
        raise ValueError(
            f"VelocityUNet GroupNorm uses min(channels // 4, 32) groups, which must divide the "
            f"channel count; {channels} channels do not work (choose nf and ch_mult so every "
            f"width, and every sum of two widths on the up path, is a multiple of 4 and, above "
            f"128, of 32; config keys model.lfm.nf / model.lfm.ch_mult)"
        )
    return nn.GroupNorm(groups, channels, eps=1e-6)


class _ChannelLinear(nn.Module):
    """Per-pixel linear map over channels with weight ``[in, out]`` (a 1x1 convolution)."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_ch, out_ch))
        _init_(self.weight, init_scale)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.weight) + self.bias[:, None, None]


class _SelfAttention(nn.Module):
    """Single-head self-attention over all positions, residual with ``/ sqrt(2)`` rescale."""

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = _ChannelLinear(channels, channels, 0.1)
        self.k = _ChannelLinear(channels, channels, 0.1)
        self.v = _ChannelLinear(channels, channels, 0.1)
        self.proj = _ChannelLinear(channels, channels, init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 1, HW, C]
            return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        out = x + self.proj(out)
        return out / math.sqrt(2.0) if self.skip_rescale else out


class _ResBlock(nn.Module):
    """Time-conditioned residual block (BigGAN-style, optional x2 up/down resampling)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, skip_rescale: bool,
                 init_scale: float, resample: str | None = None) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3)
        self.temb_proj = _linear(temb_dim, out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_ch, out_ch, 3, init_scale)
        self.skip = _conv(in_ch, out_ch, 1) if (in_ch != out_ch or resample) else None
        self.act = nn.SiLU()
        self.resample = resample
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(x))
        if self.resample == "up":
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        elif self.resample == "down":
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        h = self.conv1(h) + self.temb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class _Level(nn.Module):
    """One resolution of the down or up path: res blocks, attention, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleList()  # empty, or one per block (down) / one in total (up)
        self.resample: nn.Module | None = None


class VelocityUNet(nn.Module):
    """NCSN++-style time-conditioned U-Net predicting the latent velocity ``dz/dt``.

    Args:
        in_channels: latent channels C (4).
        nf: base width (128 in the paper).
        ch_mult: width multiplier per resolution level (paper ``(1, 2, 2, 2)``).
        num_res_blocks: residual blocks per level on the down path (``+1`` on the up path).
        dropout: dropout inside residual blocks (paper 0.1; inactive in eval mode).
        attn_resolutions: latent sizes, at the training latent size ``image_size``, whose
            levels get self-attention (paper: none). The levels are fixed at construction,
            so running at other sizes keeps the same layers.
        image_size: training latent size used only to resolve ``attn_resolutions`` (32 =
            256-pixel crops / 8).
        mid_attention: self-attention between the two middle residual blocks (the authors'
            NCSN++ always has it).
        time_embedding_scale: the network embeds ``time_embedding_scale * t`` (authors feed
            ``999 * t``); callers always pass ``t`` in [0, 1].
        skip_rescale: divide residual sums by sqrt(2) (authors: True).
        init_scale: variance scale of the last conv of each block, the attention output and
            the output conv; 0 means 1e-10 (authors), so the initial velocity is ~0.
        cond_channels: channels of a condition concatenated to ``z`` at the input
            (0: the authors' unconditional v(z, t); C: v(z, t | z_0) with the HR latent z_0;
            C + 3 s^2: z_0 and the HR pixels at latent resolution; built by
            :mod:`degflow.generation.condition`; config key ``model.lfm.cond_channels``).

    ``self.config`` holds exactly these constructor arguments as plain Python types.
    Inputs: ``z [B, C, h, w]`` with h, w divisible by ``2 ** (len(ch_mult) - 1)`` (synthesis
    pads), ``t`` of shape ``[B]`` (or a scalar, broadcast to the batch) with values in [0, 1],
    and with ``cond_channels > 0`` the conditioning latent ``cond [B, cond_channels, h, w]``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        dropout: float = 0.1,
        attn_resolutions: Sequence[int] = (),
        image_size: int = 32,
        mid_attention: bool = True,
        time_embedding_scale: float = 999.0,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not ch_mult or any(m < 1 for m in ch_mult):
            raise ValueError(f"VelocityUNet ch_mult must be a non-empty list of positive ints, got "
                             f"{list(ch_mult)} (config key model.lfm.ch_mult)")
        if nf < 4 or nf % 2:
            raise ValueError(f"VelocityUNet nf must be an even number >= 4, got {nf} "
                             f"(config key model.lfm.nf)")
        if num_res_blocks < 1:
            raise ValueError(f"VelocityUNet num_res_blocks must be >= 1, got {num_res_blocks} "
                             f"(config key model.lfm.num_res_blocks)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VelocityUNet dropout must be in [0, 1), got {dropout} "
                             f"(config key model.lfm.dropout)")
        check_int(cond_channels, "model.lfm.cond_channels", minimum=0, hint=" (0 = unconditional)")
        self.config = {
            "in_channels": int(in_channels),
            "nf": int(nf),
            "ch_mult": list(ch_mult),
            "num_res_blocks": int(num_res_blocks),
            "dropout": float(dropout),
            "attn_resolutions": list(attn_resolutions),
            "image_size": int(image_size),
            "mid_attention": bool(mid_attention),
            "time_embedding_scale": float(time_embedding_scale),
            "skip_rescale": bool(skip_rescale),
            "init_scale": float(init_scale),
            "cond_channels": int(cond_channels),
        }
        self.cond_channels = int(cond_channels)
        self.in_channels = int(in_channels)
        self.nf = int(nf)
        self.num_levels = len(ch_mult)
        self.divisor = 2 ** (self.num_levels - 1)
        self.time_embedding_scale = float(time_embedding_scale)
        temb_dim = 4 * nf
        attn_levels = {i for i in range(self.num_levels) if image_size // 2**i in attn_resolutions}

        def block(i: int, o: int, resample: str | None = None) -> _ResBlock:
            return _ResBlock(i, o, temb_dim, dropout, skip_rescale, init_scale, resample)

        def attention(c: int) -> _SelfAttention:
            return _SelfAttention(c, skip_rescale, init_scale)

        self.time_embed = nn.Sequential(_linear(nf, temb_dim), nn.SiLU(), _linear(temb_dim, temb_dim))
        self.conv_in = _conv(in_channels + self.cond_channels, nf, 3)

        skip_ch = [nf]
        ch = nf
        self.down = nn.ModuleList()
        for lvl, mult in enumerate(ch_mult):
            level = _Level()
            for _ in range(num_res_blocks):
                level.blocks.append(block(ch, nf * mult))
                ch = nf * mult
                if lvl in attn_levels:
                    level.attn.append(attention(ch))
                skip_ch.append(ch)
            if lvl != self.num_levels - 1:
                level.resample = block(ch, ch, "down")
                skip_ch.append(ch)
            self.down.append(level)

        self.mid_block1 = block(ch, ch)
        self.mid_attn = attention(ch) if mid_attention else None
        self.mid_block2 = block(ch, ch)

        # self.up[k] is the k-th level executed on the way up, i.e. level num_levels-1-k.
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.num_levels)):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(block(ch + skip_ch.pop(), nf * ch_mult[lvl]))
                ch = nf * ch_mult[lvl]
            if lvl in attn_levels:
                level.attn.append(attention(ch))
            if lvl != 0:
                level.resample = block(ch, ch, "up")
            self.up.append(level)
        assert not skip_ch

        self.norm_out = _group_norm(ch)
        self.conv_out = _conv(ch, in_channels, 3, init_scale)
        self.act = nn.SiLU()

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"VelocityUNet expects z of shape [B, {self.in_channels}, h, w], "
                             f"got {list(z.shape)}")
        h, w = z.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(
                f"VelocityUNet latent size {h}x{w} is not divisible by {self.divisor} "
                f"(2 ** (len(ch_mult) - 1) with {self.num_levels} levels); pad the latent "
                f"(synthesis pads the image to a multiple of {8 * self.divisor} pixels)"
            )
        t = torch.as_tensor(t, device=z.device).float()  # fp32 even under autocast / bf16 latents
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
            t = t.reshape(1).expand(z.shape[0])
        if t.dim() != 1 or t.shape[0] != z.shape[0]:
            raise ValueError(f"VelocityUNet expects t of shape [B] = [{z.shape[0]}] (or a scalar), "
                             f"got {list(t.shape)}")
        if not torch.compiler.is_compiling():
            if bool(((t < 0) | (t > 1)).any()):
                raise ValueError(
                    f"VelocityUNet expects t in [0, 1] (it scales by {self.time_embedding_scale:g} "
                    f"internally), got values in [{t.min().item():.4g}, {t.max().item():.4g}]"
                )
        return t

    # ------------------------------------------------------------------ forward
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B] in [0, 1] -> [B, 4 nf]`` (sinusoidal features of ``scale * t``, then MLP)."""
        return self.time_embed(timestep_embedding(t * self.time_embedding_scale, self.nf))

    def forward(self, z: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = self._check_inputs(z, t)
        temb = self.time_embedding(t)
        if self.cond_channels:
            if cond is None or cond.shape != (z.shape[0], self.cond_channels, *z.shape[-2:]):
                got = None if cond is None else list(cond.shape)
                raise ValueError(f"VelocityUNet with cond_channels={self.cond_channels} expects cond of shape "
                                 f"{[z.shape[0], self.cond_channels, *z.shape[-2:]]}, got {got}")
            z = torch.cat([z, cond.to(z.dtype)], dim=1)                      # [B,C+Cc,h,w]
        elif cond is not None:
            raise ValueError("VelocityUNet with cond_channels=0 takes no cond (set model.lfm.cond_channels)")

        h = self.conv_in(z)
        skips = [h]
        for level in self.down:
            for i, blk in enumerate(level.blocks):
                h = blk(h, temb)
                if len(level.attn):
                    h = level.attn[i](h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h, temb)
                skips.append(h)

        h = self.mid_block1(h, temb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid_block2(h, temb)

        for level in self.up:
            for blk in level.blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), temb)
            for attn in level.attn:
                h = attn(h)
            if level.resample is not None:
                h = level.resample(h, temb)

        return self.conv_out(self.act(self.norm_out(h)))
