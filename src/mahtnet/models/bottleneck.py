"""Vision-Transformer bottleneck over the stride-32 encoder features.

Each feature-map position is a token (a 1x1 patch embedding), with a learnable positional
embedding defined on a ``pos_size x pos_size`` grid and bicubically interpolated to the
actual token grid, so one model runs at any input size. Blocks are pre-LayerNorm
multi-head self-attention + MLP with residuals; attention is global, or local in
non-overlapping ``window x window`` token windows for large inputs (the grid is padded to a
multiple of the window; padding tokens are masked out). ``layers=0`` makes
the bottleneck the identity (the ablation without a transformer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, hw: tuple[int, int], window: int) -> tuple[torch.Tensor, tuple]:
    """Tokens ``(B, N, D)`` on an ``h x w`` grid -> ``(B * nW, window**2, D)`` windows (the grid
    zero-padded to a multiple of ``window``) and what :func:`window_reverse` needs."""
    b, _, d = x.shape
    h, w = hw
    ph, pw = -h % window, -w % window
    x = F.pad(x.view(b, h, w, d), (0, 0, 0, pw, 0, ph))  # (B, H', W', D)
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, d).transpose(2, 3)
    return x.reshape(-1, window * window, d), (b, h, w, hp, wp)


def window_reverse(x: torch.Tensor, info: tuple, window: int) -> torch.Tensor:
    b, h, w, hp, wp = info
    d = x.shape[-1]
    x = x.view(b, hp // window, wp // window, window, window, d).transpose(2, 3)  # (B, nh, wh, nw, ww, D)
    return x.reshape(b, hp, wp, d)[:, :h, :w].reshape(b, h * w, d)


class Attention(nn.Module):
    """Multi-head self-attention (``F.scaled_dot_product_attention``), global or windowed."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer_dim {dim} is not divisible by transformer_heads {heads}")
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, heads, N, D/heads)

    def _padding_mask(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor | None:
        """``(B * nW, 1, 1, window**2)`` True for real tokens, so padding is never attended to."""
        if not (hw[0] % self.window or hw[1] % self.window):
            return None
        ones = torch.ones(1, hw[0] * hw[1], 1, device=x.device, dtype=x.dtype)
        real = window_partition(ones, hw, self.window)[0][..., 0] > 0  # (nW, window**2)
        return real.repeat(x.shape[0], 1)[:, None, None, :]

    def _windows(
        self, x: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple | None, torch.Tensor | None]:
        """Tokens as attention sees them: ``(x, partition info, padding mask)``; global
        attention leaves ``x`` as it is."""
        if not self.window:
            return x, None, None
        mask = self._padding_mask(x, hw)
        x, info = window_partition(x, hw, self.window)
        return x, info, mask

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x, info, mask = self._windows(x, hw)
        b, n, d = x.shape
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, d)
        x = self.proj(x)
        return window_reverse(x, info, self.window) if self.window else x

    @torch.no_grad()
    def attention_matrix(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Attention weights ``(B, N, N)`` (query rows, key columns), mean over heads; global
        attention only (a windowed layer attends within its window)."""
        if self.window:
            raise NotImplementedError("attention_matrix: windowed attention has no N x N matrix")
        q, k, _ = self._qkv(x)
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1).mean(dim=1)

    @torch.no_grad()
    def attention_received(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Mean attention each token receives (over heads and queries): ``(B, N)``; for
        visualisation (it materialises the attention matrix)."""
        x, info, mask = self._windows(x, hw)
        q, k, _ = self._qkv(x)
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, h, N, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        received = weights.mean(dim=(1, 2))[..., None]  # (B, N, 1)
        return window_reverse(received, info, self.window)[..., 0] if self.window else received[..., 0]


class TransformerBlock(nn.Module):
    """Pre-LN: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x))


class TransformerBottleneck(nn.Module):
    """``(B, C, h, w)`` -> ``(B, out_channels, h, w)``; ``out_channels`` is ``dim``, or ``C``
    when ``layers == 0`` (identity).

    Args:
        in_channels: width of the stride-32 features.
        layers: number of transformer blocks (0: identity).
        dim, heads, mlp_ratio: token width, attention heads, MLP hidden width / ``dim``.
        window: 0 for global attention, else the side of the local attention windows (tokens).
        pos_size: side of the learnable positional-embedding grid (interpolated to ``h x w``).
    """

    def __init__(
        self,
        in_channels: int,
        layers: int,
        dim: int,
        heads: int,
        mlp_ratio: float,
        window: int,
        pos_size: int,
    ):
        super().__init__()
        self.out_channels = dim if layers else in_channels
        self.bypass = False  # True: skip the blocks (tokens -> norm), e.g. in training stage 1
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio, window) for _ in range(layers)])
        if not layers:
            return
        self.embed = nn.Conv2d(in_channels, dim, 1)  # 1x1 patch embedding of each stride-32 position
        self.pos = nn.Parameter(torch.zeros(1, dim, pos_size, pos_size))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def pos_embedding(self, hw: tuple[int, int]) -> torch.Tensor:
        """Positional embedding ``(1, h * w, dim)`` for an ``h x w`` token grid."""
        pos = self.pos
        if tuple(pos.shape[-2:]) != hw:
            pos = F.interpolate(pos, size=hw, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Feature map -> embedded tokens ``(B, h * w, dim)`` with positions, and ``(h, w)``."""
        hw = (x.shape[-2], x.shape[-1])
        return self.embed(x).flatten(2).transpose(1, 2) + self.pos_embedding(hw), hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return x
        b = x.shape[0]
        tokens, (h, w) = self.tokens(x)
        for block in () if self.bypass else self.blocks:
            tokens = block(tokens, (h, w))
        return self.norm(tokens).transpose(1, 2).reshape(b, -1, h, w)  # (B, dim, h, w)
