"""GR00T N1.5 in plain PyTorch: the Eagle 2.5 backbone (SigLIP -> mlp1 -> Qwen3) and the flow-matching action head.

The blocks both families share come from `gr00t_export.nn`; N1.5's own parts live here: the Conv2d patch
embedding, the Eagle glue, the DiT and VL self-attention stacks, the action head and its Euler sampler. Modules are
named for what they are; `CHECKPOINT_NAMES` maps the real checkpoint's names onto them at load. `get_action` takes
the initial noise as an argument (no hidden RNG), so exported and reference pipelines run on the same noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_5.config import ActionHeadConfig, Gr00tConfig, TransformerConfig, VisionConfig
from gr00t_export.nn.dit import DIFFUSERS_NAMES, TimestepEncoder, TransformerBlock, dit_conditioning, modulated_block
from gr00t_export.nn.embodiment import CategorySpecificMLP, MultiEmbodimentActionEncoder
from gr00t_export.nn.qwen3 import Qwen3Model
from gr00t_export.nn.siglip import SiglipEncoder
from gr00t_export.weights import CheckpointNames

# Keys a real checkpoint may carry that N1.5 never reads: the SigLIP pooling head and the tied lm_head.
UNUSED_KEY_PREFIXES = (
    "backbone.eagle_model.vision_model.vision_model.head.",
    "backbone.eagle_model.language_model.lm_head.",
)
CHECKPOINT_NAMES = CheckpointNames((
    ("eagle_model.vision_model.vision_model", "eagle_model.vision_model"),  # transformers' SiglipVisionModel level
    ("eagle_model.language_model.model", "eagle_model.language_model"),  # Qwen3ForCausalLM level (lm_head unused)
    ("eagle_model.mlp1.0", "eagle_model.mlp1"),  # a one-layer nn.Sequential
    *DIFFUSERS_NAMES,
))


# --- backbone --------------------------------------------------------------------------------------

class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (N, 3, 224, 224) -> (N, 256, hidden)
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight


class SiglipVisionModel(nn.Module):
    """SigLIP as Eagle 2.5 uses it: `last_hidden_state` after `post_layernorm`, no pooling head."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (N, 3, 224, 224) -> (N, 256, hidden)
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


class EagleModel(nn.Module):
    """Eagle 2.5 VL: SigLIP -> mlp1 -> scatter into the token embeddings -> Qwen3 (select_layer layers)."""

    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.image_token_index = cfg.image_token_index
        self.vision_model = SiglipVisionModel(cfg.vision)
        self.mlp1 = nn.Linear(cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language_model = Qwen3Model(cfg.text, cfg.select_layer)

    def embed(self, input_ids: Tensor, vit_embeds: Tensor) -> Tensor:
        """Token embeddings with each image-token position replaced by a projected patch, in order."""
        # input_ids (B, L); vit_embeds (N_images, 256, vision_hidden) in (batch, image) order
        embeds = self.language_model.embed_tokens(input_ids)
        image_features = self.mlp1(vit_embeds).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        is_image = (input_ids == self.image_token_index).reshape(-1)
        # k-th image-token position takes the k-th patch row: a gather, so it exports without masked assignment
        source_row = (torch.cumsum(is_image.long(), 0) - 1).clamp(min=0)
        scattered = image_features[source_row]
        flat = torch.where(is_image[:, None], scattered, embeds.reshape(-1, embeds.shape[-1]))
        return flat.reshape(embeds.shape)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, vit_embeds: Tensor) -> Tensor:
        return self.language_model(self.embed(input_ids, vit_embeds), attention_mask)


class EagleBackbone(nn.Module):
    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        self.eagle_model = EagleModel(cfg)
        if cfg.project_to_dim is None:
            self.eagle_linear = nn.Identity()
        else:
            self.eagle_linear = nn.Linear(cfg.text.hidden_size, cfg.project_to_dim)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # pixel_values (N_images, 3, 224, 224); input_ids/attention_mask (B, L) -> (B, L, 2048)
        vit_embeds = self.eagle_model.vision_model(pixel_values)
        return self.eagle_linear(self.eagle_model(input_ids, attention_mask, vit_embeds))


# --- action head -----------------------------------------------------------------------------------

class SelfAttentionTransformer(nn.Module):
    """`vl_self_attention`: attends over all backbone tokens, padding included (no mask, as in N1.5)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.inner_dim
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_attention_heads, cfg.attention_head_dim, None, ada_norm=False)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


class DiT(nn.Module):
    """16 blocks: even ones cross-attend to the VL tokens, odd ones self-attend; AdaLN output layer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.inner_dim
        self.dim = d
        self.interleave = cfg.interleave_self_attention
        self.timestep_encoder = TimestepEncoder(d)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                d, cfg.num_attention_heads, cfg.attention_head_dim,
                None if (self.interleave and i % 2 == 1) else cfg.cross_attention_dim, ada_norm=True,
            )
            for i in range(cfg.num_layers)
        )
        self.proj_out_1 = nn.Linear(d, 2 * d)
        self.proj_out_2 = nn.Linear(d, cfg.output_dim)

    def is_cross(self, i: int) -> bool:
        return not (self.interleave and i % 2 == 1)

    def cross_kv(self, vl_embs: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        """Keys and values of the VL tokens for every cross-attention block: the same at every Euler step, so the
        sampler computes them once per call."""
        return [block.attn1.kv(vl_embs) if self.is_cross(i) else None
                for i, block in enumerate(self.transformer_blocks)]

    def conditioning(self, timesteps: Tensor) -> Tensor:
        """(num_layers + 1, 2, inner): every block's AdaLN (scale, shift) and the output layer's (shift, scale) for one
        timestep (1,) shared by the batch."""
        return dit_conditioning(self.timestep_encoder, self.transformer_blocks, self.proj_out_1, timesteps)

    def forward(self, sa_embs: Tensor, context_kv: list[tuple[Tensor, Tensor] | None], conditioning: Tensor) -> Tensor:
        # sa_embs (B, 49, inner), context_kv from `cross_kv`, conditioning of the step (`conditioning`)
        # -> (B, 49, output_dim)
        x = sa_embs
        for i, (block, kv) in enumerate(zip(self.transformer_blocks, context_kv, strict=True)):
            x = modulated_block(block, x, conditioning[i, 0], conditioning[i, 1], kv=kv)
        shift, scale = conditioning[-1, 0], conditioning[-1, 1]
        return self.proj_out_2(F.layer_norm(x, (self.dim,), 1 + scale, shift, 1e-6))


class FlowmatchingActionHead(nn.Module):
    """Post-VLM adapter, embodiment-specific encoders, DiT, Euler sampler."""

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

    def conditioning(self) -> Tensor:
        """(steps, num_layers + 1, 2, inner): the DiT's AdaLN modulations at every Euler step. They depend on the
        weights only (one timestep per step for the whole batch), so an export holds them as one constant table."""
        device = self.model.proj_out_1.weight.device
        steps = self.cfg.num_inference_timesteps
        return torch.stack([self.model.conditioning(torch.full((1,), t, dtype=torch.long, device=device))
                            for t in self.timestep_buckets(steps, self.cfg.num_timestep_buckets)])

    def velocity(self, context_kv: list, state_features: Tensor, actions: Tensor, timesteps: Tensor,
                 conditioning: Tensor, embodiment_id: Tensor) -> Tensor:
        """One DiT evaluation: (B, 16, action_dim) noisy actions at `timesteps` (1,) -> predicted velocity."""
        action_features = self.action_encoder(actions, timesteps, embodiment_id)
        if self.cfg.add_pos_embed:
            action_features = action_features + self.position_embedding.weight[: actions.shape[1]].unsqueeze(0)
        future = self.future_tokens.weight.unsqueeze(0).expand(actions.shape[0], -1, -1)
        sa_embs = torch.cat([state_features, future.to(state_features.dtype), action_features], dim=1)
        pred = self.action_decoder(self.model(sa_embs, context_kv, conditioning), embodiment_id)
        return pred[:, -actions.shape[1]:]

    def get_action(self, backbone_features: Tensor, state: Tensor, embodiment_id: Tensor,
                   init_actions: Tensor, conditioning: Tensor | None = None) -> Tensor:
        """Euler integration from the supplied noise; returns normalised action_pred (B, 16, action_dim).
        `conditioning`: `self.conditioning()`, computed per step when not given (an export passes it as a constant)."""
        # backbone_features (B, L, backbone), state (B, 1, 64), embodiment_id (B,) int64, init_actions (B, 16, 32)
        vl_embs = self.encode_context(backbone_features)
        context_kv = self.model.cross_kv(vl_embs)  # once per call, not once per Euler step
        state_features = self.state_encoder(state.to(vl_embs.dtype), embodiment_id)
        actions = init_actions.to(vl_embs.dtype)
        steps = self.cfg.num_inference_timesteps
        dt = 1.0 / steps
        for step, t in enumerate(self.timestep_buckets(steps, self.cfg.num_timestep_buckets)):
            # one timestep for the whole batch, independent of the inputs
            timesteps = torch.full((1,), t, dtype=torch.long, device=actions.device)
            step_conditioning = self.model.conditioning(timesteps) if conditioning is None else conditioning[step]
            actions = actions + dt * self.velocity(context_kv, state_features, actions, timesteps, step_conditioning,
                                                   embodiment_id)
        return actions


class Gr00tN15(nn.Module):
    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = EagleBackbone(cfg)
        self.action_head = FlowmatchingActionHead(cfg.action_head)
        CHECKPOINT_NAMES.attach(self)

    def setup_caches(self) -> None:
        """Recomputes the tables outside the state dict (RoPE), e.g. after weights were assigned on the meta device."""
        self.backbone.eagle_model.language_model.setup_caches()

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, state: Tensor,
                embodiment_id: Tensor, init_actions: Tensor) -> Tensor:
        """Model-space inputs -> normalised action_pred (B, 16, action_dim)."""
        features = self.backbone(pixel_values, input_ids, attention_mask)
        return self.action_head.get_action(features, state, embodiment_id, init_actions)
