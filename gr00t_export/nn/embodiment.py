"""Per-embodiment (category-specific) layers of both action heads: one weight matrix per embodiment id."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CategorySpecificLinear(nn.Module):
    """One linear layer per embodiment, stored as W[cat, in, out]: y = x @ W[cat] + b[cat] (not x @ W.T)."""

    def __init__(self, num_categories: int, in_dim: int, out_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(num_categories, in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(num_categories, out_dim))

    def forward(self, x: Tensor, cat_ids: Tensor) -> Tensor:
        # x (B, T, in), cat_ids (B,) -> (B, T, out)
        return torch.bmm(x, self.W[cat_ids]) + self.b[cat_ids].unsqueeze(1)


class CategorySpecificMLP(nn.Module):
    def __init__(self, num_categories: int, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden)
        self.layer2 = CategorySpecificLinear(num_categories, hidden, out_dim)

    def forward(self, x: Tensor, cat_ids: Tensor) -> Tensor:
        return self.layer2(F.relu(self.layer1(x, cat_ids)), cat_ids)


def action_timestep_sinusoid(timesteps: Tensor, dim: int) -> Tensor:
    """(B, T) -> (B, T, dim): [sin, cos] with freq = exp(-i * ln(1e4) / (dim/2))."""
    half = dim // 2
    freq = torch.exp(-torch.arange(half, dtype=torch.float32, device=timesteps.device) * (math.log(10000.0) / half))
    args = timesteps.float().unsqueeze(-1) * freq
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    def __init__(self, action_dim: int, hidden: int, num_embodiments: int):
        super().__init__()
        self.hidden = hidden
        self.W1 = CategorySpecificLinear(num_embodiments, action_dim, hidden)
        self.W2 = CategorySpecificLinear(num_embodiments, 2 * hidden, hidden)
        self.W3 = CategorySpecificLinear(num_embodiments, hidden, hidden)

    def forward(self, actions: Tensor, timesteps: Tensor, cat_ids: Tensor) -> Tensor:
        # actions (B, T, action_dim), timesteps (B,) or (1,) int -> (B, T, hidden)
        a = self.W1(actions, cat_ids)
        # the same timestep for every action step: computed once per sample, then broadcast
        tau = action_timestep_sinusoid(timesteps[:, None], self.hidden).to(a.dtype).expand(a.shape[0], a.shape[1], -1)
        x = self.W2(torch.cat([a, tau], dim=-1), cat_ids)
        return self.W3(x * torch.sigmoid(x), cat_ids)
