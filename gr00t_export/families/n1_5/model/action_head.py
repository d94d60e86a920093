"""The N1.5 flow-matching action head: post-VLM adapter, embodiment-specific encoders, DiT, Euler sampler.

Names follow `action_head.*` of the real checkpoint. `get_action` takes the initial noise as an
argument (no hidden RNG) so exported and reference pipelines can be compared on the same noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_5.config import ActionHeadConfig
from gr00t_export.families.n1_5.model.dit import DiT, SelfAttentionTransformer


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
        # actions (B, 16, action_dim), timesteps (B,) or (1,) int -> (B, 16, hidden)
        a = self.W1(actions, cat_ids)
        # the same timestep for every action step: computed once per sample, then broadcast
        tau = action_timestep_sinusoid(timesteps[:, None], self.hidden).to(a.dtype).expand(a.shape[0], a.shape[1], -1)
        x = self.W2(torch.cat([a, tau], dim=-1), cat_ids)
        return self.W3(x * torch.sigmoid(x), cat_ids)


class FlowmatchingActionHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.max_num_embodiments
        self.model = DiT(cfg.diffusion_model)
        self.state_encoder = CategorySpecificMLP(n, cfg.max_state_dim, cfg.hidden_size, cfg.input_embedding_dim)
        self.action_encoder = MultiEmbodimentActionEncoder(cfg.action_dim, cfg.input_embedding_dim, n)
        self.action_decoder = CategorySpecificMLP(n, cfg.hidden_size, cfg.hidden_size, cfg.action_dim)
        self.future_tokens = nn.Embedding(cfg.num_target_vision_tokens, cfg.input_embedding_dim)
        self.vlln = nn.LayerNorm(cfg.backbone_embedding_dim) if cfg.use_vlln else nn.Identity()
        self.vl_self_attention = SelfAttentionTransformer(cfg.vl_self_attention) if cfg.use_vlln else nn.Identity()
        if cfg.add_pos_embed:
            self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.input_embedding_dim)

    @staticmethod
    def timestep_buckets(num_steps: int, num_buckets: int = 1000) -> list[int]:
        """The discrete timesteps of the Euler sampler: 0, 250, 500, 750 for 4 steps."""
        return [int(step / float(num_steps) * num_buckets) for step in range(num_steps)]

    def encode_context(self, backbone_features: Tensor) -> Tensor:
        # (B, L, backbone) -> vl_embs (B, L, backbone): the DiT's cross-attention keys/values
        return self.vl_self_attention(self.vlln(backbone_features))

    def velocity(self, vl_embs: Tensor, state_features: Tensor, actions: Tensor, timesteps: Tensor,
                 embodiment_id: Tensor) -> Tensor:
        """One DiT evaluation: (B, 16, action_dim) noisy actions at `timesteps` (1,) -> predicted velocity."""
        action_features = self.action_encoder(actions, timesteps, embodiment_id)
        if self.cfg.add_pos_embed:
            action_features = action_features + self.position_embedding.weight[: actions.shape[1]].unsqueeze(0)
        future = self.future_tokens.weight.unsqueeze(0).expand(actions.shape[0], -1, -1)
        sa_embs = torch.cat([state_features, future.to(state_features.dtype), action_features], dim=1)
        pred = self.action_decoder(self.model(sa_embs, vl_embs, timesteps), embodiment_id)
        return pred[:, -actions.shape[1]:]

    def get_action(self, backbone_features: Tensor, state: Tensor, embodiment_id: Tensor,
                   init_actions: Tensor) -> Tensor:
        """Euler integration from the supplied noise; returns normalised action_pred (B, 16, action_dim)."""
        # backbone_features (B, L, backbone), state (B, 1, 64), embodiment_id (B,) int64, init_actions (B, 16, 32)
        vl_embs = self.encode_context(backbone_features)
        state_features = self.state_encoder(state.to(vl_embs.dtype), embodiment_id)
        actions = init_actions.to(vl_embs.dtype)
        steps = self.cfg.num_inference_timesteps
        dt = 1.0 / steps
        for t in self.timestep_buckets(steps, self.cfg.num_timestep_buckets):
            # one timestep for the whole batch, broadcast: it does not depend on the inputs, so the exporter folds
            # the step's timestep embedding and every AdaLN scale/shift derived from it into constants
            timesteps = torch.full((1,), t, dtype=torch.long, device=actions.device)
            actions = actions + dt * self.velocity(vl_embs, state_features, actions, timesteps, embodiment_id)
        return actions
