"""List-transformer scorers for the learning-to-rank track (SPEC 4).

A group is a set of items: no positional encoding, a padding mask, one scalar score per item.
Shapes: ``x (B, n, d)`` features, ``mask (B, n)`` True on real items, scores ``(B, n)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from moft.config import ModelConfig

FeatureTransform = Literal["standardize", "log1p_standardize"]


class FeatureScaler(nn.Module):
    """Optional signed log1p, then z-scores with training-split statistics (saved as buffers)."""

    def __init__(self, n_features: int, transform: FeatureTransform = "log1p_standardize"):
        super().__init__()
        self.log1p = transform == "log1p_standardize"
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * torch.log1p(x.abs()) if self.log1p else x

    @torch.no_grad()
    def fit(self, items: torch.Tensor) -> FeatureScaler:
        """Fit on a (N, d) matrix of training items."""
        pre = self._pre(items)
        self.mean.copy_(pre.mean(0))
        self.std.copy_(pre.std(0).clamp_min(1e-6))  # constant features map to 0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._pre(x) - self.mean) / self.std


class FiLM(nn.Module):
    """``h * (1 + gamma(c)) + beta(c)`` from a conditioning vector ``c`` (B, k); starts as identity."""

    def __init__(self, n_cond: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_cond, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.net(cond)[:, None, :].chunk(2, dim=-1)  # (B, 1, hidden) each
        return h * (1 + gamma) + beta


class ListTransformer(nn.Module):
    """Input projection, ``layers`` pre-norm encoder layers, per-item scalar head.

    With ``n_cond > 0`` a conditioning vector (the trade-off ``w``) modulates the input
    projection and every layer's output by FiLM.
    """

    def __init__(self, n_in: int, cfg: ModelConfig, n_cond: int = 0):
        super().__init__()
        self.proj = nn.Linear(n_in, cfg.hidden)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden,
            cfg.heads,
            cfg.hidden * cfg.ff_mult,
            cfg.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, 1))
        self.film = nn.ModuleList(FiLM(n_cond, cfg.hidden) for _ in range(cfg.layers + 1)) if n_cond else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        z = self.proj(h)
        if self.film is None:
            z = self.encoder(z, src_key_padding_mask=~mask)
        else:
            z = self.film[0](z, cond)
            for layer, film in zip(self.encoder.layers, self.film[1:]):
                z = film(layer(z, src_key_padding_mask=~mask), cond)
        return self.head(z).squeeze(-1).masked_fill(~mask, 0.0)  # (B, n)


class BaseScorer(nn.Module):
    """``s_base(y | x)``: the scaler plus a list transformer over the scaled features."""

    def __init__(self, n_features: int, cfg: ModelConfig, transform: FeatureTransform):
        super().__init__()
        self.scaler = FeatureScaler(n_features, transform)
        self.net = ListTransformer(n_features, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(self.scaler(x), mask)


class HyperScorer(nn.Module):
    """``s_theta(y, w | x)``: a list transformer conditioned on ``w``.

    ``concat`` appends ``w`` to every item's features (the paper's design); ``film`` modulates
    every layer with ``w`` (a stronger signal: with concatenation ``w`` is 2 of ~130 inputs).
    ``scratch``: its output is the score. ``augmentation``: ``s_base(y) + Delta(y, w)`` with the
    base frozen; ``Delta``'s head starts at zero so training starts from the base ranking.
    The scaler is the base model's (same inputs, same statistics). ``temperature=True`` (the
    temperature hypernetwork, HyperDPO Algorithm 2) makes the conditioning vector
    ``(w, beta / |beta|_1)``, of size ``2 m``.
    """

    def __init__(
        self,
        base: BaseScorer,
        n_objectives: int,
        cfg: ModelConfig,
        parametrization: Literal["scratch", "augmentation"],
        conditioning: Literal["concat", "film"] = "film",
        temperature: bool = False,
    ):
        super().__init__()
        self.parametrization = parametrization
        self.conditioning = conditioning
        self.n_objectives = n_objectives
        self.temperature = temperature
        n_cond = n_objectives * (2 if temperature else 1)
        n_features = base.scaler.mean.numel()
        self.scaler = FeatureScaler(n_features)
        self.scaler.load_state_dict(base.scaler.state_dict())
        self.scaler.log1p = base.scaler.log1p
        film = conditioning == "film"
        self.net = ListTransformer(n_features + (0 if film else n_cond), cfg, n_cond=n_cond if film else 0)
        self.base = base if parametrization == "augmentation" else None
        if self.base is not None:
            self.base.requires_grad_(False)
            nn.init.zeros_(self.net.head[1].weight)
            nn.init.zeros_(self.net.head[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        w: torch.Tensor,
        base_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``w`` is (B, m): one weight vector per group ((B, 2m) with the normalised temperature
        appended for a temperature hypernetwork). ``base_scores`` (B, n) may be passed
        when the caller already has them (augmentation adds them instead of recomputing)."""
        h = self.scaler(x)
        if self.conditioning == "film":
            out = self.net(h, mask, cond=w)
        else:
            out = self.net(torch.cat([h, w[:, None, :].expand(-1, h.shape[1], -1)], dim=-1), mask)
        if self.base is not None:
            if base_scores is None:
                self.base.eval()
                with torch.no_grad():
                    base_scores = self.base(x, mask)
            out = out + base_scores
        return out

    def at_temperature(
        self, x: torch.Tensor, mask: torch.Tensor, w: torch.Tensor, betas: torch.Tensor, base_scores: torch.Tensor
    ) -> torch.Tensor:
        """Temperature hypernetwork scores (HyperDPO eq. 19) at per-group temperatures ``betas``
        (B, m): ``(1 - 1/|beta|_1) s_base + (1/|beta|_1) s_theta(., w, beta / |beta|_1)``."""
        if not self.temperature:
            raise ValueError("this hypernetwork is not conditioned on the temperature")
        norm = betas.sum(-1, keepdim=True)  # (B, 1)
        net = self(x, mask, torch.cat([w, betas / norm], dim=-1), base_scores)
        return (1 - 1 / norm) * base_scores + net / norm

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
