"""GR00T N1.6 in plain PyTorch, under the checkpoint's state-dict names.

`backbone.model.*` is Eagle-Block2A-2B-v2: SigLIP2-style tower -> pixel unshuffle 2 x 2 -> `mlp1` (LayerNorm,
Linear, GELU, Linear) -> scattered into the `<IMG_CONTEXT>` positions of the token embeddings -> Qwen3 cut to
`select_layer` layers + its final norm. `action_head.*` is the flow-matching head: `vlln`, category-specific
state/action encoders and decoder, a position embedding on the action tokens, and the AlternateVLDiT whose
cross-attention blocks alternate between the non-image and the image tokens of the prompt.

The Euler sampler takes its initial noise as an input and uses one timestep for the whole batch, so the
timestep embedding and every AdaLN scale/shift derived from it depend on the weights only: `conditioning()` computes
them for all Euler steps at once, and an export holds that table as a constant (no timestep MLP or AdaLN projection
in the graph, whatever its size).
Qwen3, the SigLIP encoder, the DiT blocks, the timestep encoder and the category-specific layers are the shared
blocks of `gr00t_export.nn`. Modules are named for what they are; `CHECKPOINT_NAMES` maps the checkpoint's names
onto them at load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr00t_export.families.n1_6.config import ActionHeadConfig, AlternateVLDiTConfig, Gr00tN16Config
from gr00t_export.families.n1_6.vision import POOLING_HEAD_PREFIX, Siglip2VisionModel
from gr00t_export.nn.dit import DIFFUSERS_NAMES, TimestepEncoder, TransformerBlock, dit_conditioning, modulated_block
from gr00t_export.nn.embodiment import CategorySpecificMLP, MultiEmbodimentActionEncoder
from gr00t_export.nn.qwen3 import Qwen3Model
from gr00t_export.weights import CheckpointNames

VISION_PREFIX = "backbone.model.vision_model.vision_model."
# Keys a real checkpoint carries that N1.6 never reads: the vision pooling head and the tied lm_head.
UNUSED_KEY_PREFIXES = (VISION_PREFIX + POOLING_HEAD_PREFIX, "backbone.model.language_model.lm_head.")
CHECKPOINT_NAMES = CheckpointNames((
    ("model.vision_model.vision_model", "model.vision_model"),  # transformers' vision-model wrapper level
    ("model.language_model.model", "model.language_model"),  # Qwen3ForCausalLM level (lm_head unused)
    ("model.mlp1.0", "model.mlp1.norm"), ("model.mlp1.1", "model.mlp1.fc1"),  # an nn.Sequential: LN, Linear, GELU,
    ("model.mlp1.3", "model.mlp1.fc2"),  # Linear
    *DIFFUSERS_NAMES,
))


# --- backbone --------------------------------------------------------------------------------------

def pixel_unshuffle_tokens(vit_embeds: Tensor, grid_h: int, grid_w: int, factor: int) -> Tensor:
    """(N, h*w, C) row-major patch tokens -> (N, h/f * w/f, C*f*f): channel c*f*f + dy*f + dx, tokens row-major."""
    n, _, channels = vit_embeds.shape
    grid = vit_embeds.transpose(1, 2).reshape(n, channels, grid_h, grid_w)
    return F.pixel_unshuffle(grid, factor).flatten(2).transpose(1, 2)


def scatter_image_tokens(embeds: Tensor, input_ids: Tensor, image_token_index: int, image_tokens: Tensor) -> Tensor:
    """Token embeddings (B, L, D) with the k-th `<IMG_CONTEXT>` position replaced by row k of `image_tokens` (M, D).

    A gather (row = running count of image tokens), so it exports without masked assignment.
    """
    flat = embeds.reshape(-1, embeds.shape[-1])
    is_image = (input_ids == image_token_index).reshape(-1)
    source_row = (torch.cumsum(is_image.long(), 0) - 1).clamp(min=0)
    scattered = image_tokens.to(embeds.dtype)[source_row]
    return torch.where(is_image[:, None], scattered, flat).reshape(embeds.shape)


class VisionConnector(nn.Module):
    """`mlp1`: LayerNorm -> Linear -> GELU (erf, as NVIDIA's) -> Linear, from unshuffled patches to the LLM width."""

    def __init__(self, merged: int, llm: int):
        super().__init__()
        self.norm = nn.LayerNorm(merged, eps=1e-5)
        self.fc1 = nn.Linear(merged, llm)
        self.fc2 = nn.Linear(llm, llm)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Eagle3VLModel(nn.Module):
    """`backbone.model`: vision tower, connector, LLM."""

    def __init__(self, cfg: Gr00tN16Config):
        super().__init__()
        self.cfg = cfg
        self.image_token_index = cfg.image_token_index
        self.unshuffle = cfg.unshuffle_factor
        self.patch_size = cfg.vision.patch_size
        self.vision_model = Siglip2VisionModel(cfg.vision)
        self.mlp1 = VisionConnector(cfg.vision.hidden_size * self.unshuffle**2, cfg.text.hidden_size)
        self.language_model = Qwen3Model(cfg.text, cfg.select_layer)

    def image_tokens(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, H/28 * W/28, llm_hidden): each image attends only to itself."""
        grid_h, grid_w = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        vit_embeds = self.vision_model(pixel_values)
        return self.mlp1(pixel_unshuffle_tokens(vit_embeds, grid_h, grid_w, self.unshuffle))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """input_ids/attention_mask (B, L), image_tokens (M, llm_hidden) in prompt order -> features (B, L, llm)."""
        embeds = self.language_model.embed_tokens(input_ids)
        embeds = scatter_image_tokens(embeds, input_ids, self.image_token_index, image_tokens)
        return self.language_model(embeds, attention_mask)


class EagleBackbone(nn.Module):
    def __init__(self, cfg: Gr00tN16Config):
        super().__init__()
        self.model = Eagle3VLModel(cfg)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # pixel_values (N_images, 3, H, W) in (batch, time, view) order -> backbone_features (B, L, llm_hidden)
        image_tokens = self.model.image_tokens(pixel_values).flatten(0, 1)
        return self.model(input_ids, attention_mask, image_tokens)


# --- action head -----------------------------------------------------------------------------------

def key_bias(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) bool, True = attend -> additive (B, 1, 1, L): 0 where kept, the dtype's lowest value elsewhere."""
    neg = torch.finfo(dtype).min
    return torch.zeros((), dtype=dtype, device=keep.device).masked_fill(~keep, neg)[:, None, None, :]


def cross_attention_biases(image_mask: Tensor, attention_mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The two key masks of AlternateVLDiT as additive biases: (non-image tokens, image tokens), both padding-free."""
    valid = attention_mask.bool()
    image = image_mask.bool()
    return key_bias(valid & ~image, dtype), key_bias(valid & image, dtype)


class AlternateVLDiT(nn.Module):
    """`action_head.model`: even blocks cross-attend (idx % 4 == 0: non-image tokens, else image tokens), odd
    blocks self-attend over the state + action tokens; AdaLN output layer."""

    def __init__(self, cfg: AlternateVLDiTConfig):
        super().__init__()
        d = cfg.inner_dim
        self.dim = d
        self.cross = [cfg.is_cross_attention(i) for i in range(cfg.num_layers)]
        self.text = [cfg.attends_text(i) for i in range(cfg.num_layers)]
        self.timestep_encoder = TimestepEncoder(d)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_attention_heads, cfg.attention_head_dim,
                             cfg.cross_attention_dim if self.cross[i] else None, ada_norm=True)
            for i in range(cfg.num_layers)
        )
        self.proj_out_1 = nn.Linear(d, 2 * d)
        self.proj_out_2 = nn.Linear(d, cfg.output_dim)

    def conditioning(self, timesteps: Tensor) -> Tensor:
        """(num_layers + 1, 2, inner) for one timestep (1,) shared by the batch: each block's AdaLN (scale, shift),
        then the output layer's (shift, scale) (the reverse order, as NVIDIA's `proj_out_1` chunks it)."""
        return dit_conditioning(self.timestep_encoder, self.transformer_blocks, self.proj_out_1, timesteps)

    def cross_kv(self, vl_embs: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        """Keys and values of the VL tokens for every cross-attention block: the same at every Euler step, so the
        sampler computes them once per call."""
        return [block.attn1.kv(vl_embs) if self.cross[i] else None for i, block in enumerate(self.transformer_blocks)]

    def forward(self, sa_embs: Tensor, context_kv: list[tuple[Tensor, Tensor] | None], conditioning: Tensor,
                text_bias: Tensor, image_bias: Tensor) -> Tensor:
        # sa_embs (B, 1 + 50, inner), context_kv from `cross_kv`, conditioning (num_layers + 1, 2, inner) of the
        # step; text_bias / image_bias (B, 1, 1, L) additive key masks -> (B, 1 + 50, output_dim)
        x = sa_embs
        for i, (block, kv) in enumerate(zip(self.transformer_blocks, context_kv, strict=True)):
            scale, shift = conditioning[i, 0], conditioning[i, 1]
            if self.cross[i]:
                x = modulated_block(block, x, scale, shift, mask=text_bias if self.text[i] else image_bias, kv=kv)
            else:
                x = modulated_block(block, x, scale, shift)
        shift, scale = conditioning[-1, 0], conditioning[-1, 1]
        return self.proj_out_2(F.layer_norm(x, (self.dim,), 1 + scale, shift, 1e-6))


class Gr00tN16ActionHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.max_num_embodiments
        self.model = AlternateVLDiT(cfg.diffusion_model)
        self.state_encoder = CategorySpecificMLP(n, cfg.max_state_dim, cfg.hidden_size, cfg.input_embedding_dim)
        self.action_encoder = MultiEmbodimentActionEncoder(cfg.max_action_dim, cfg.input_embedding_dim, n)
        self.action_decoder = CategorySpecificMLP(n, cfg.hidden_size, cfg.hidden_size, cfg.max_action_dim)
        self.vlln = nn.LayerNorm(cfg.backbone_embedding_dim) if cfg.use_vlln else nn.Identity()
        if cfg.add_pos_embed:
            self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.input_embedding_dim)

    def conditioning(self) -> Tensor:
        """(steps, num_layers + 1, 2, inner): the DiT's AdaLN modulations at every Euler step. They depend on the
        weights only (one timestep per step for the whole batch), so an export computes them once."""
        device = self.model.proj_out_1.weight.device
        return torch.stack([self.model.conditioning(torch.full((1,), t, dtype=torch.long, device=device))
                            for t in self.cfg.timestep_buckets()])

    def velocity(self, context_kv: list[tuple[Tensor, Tensor] | None], text_bias: Tensor, image_bias: Tensor,
                 state_features: Tensor, actions: Tensor, timesteps: Tensor, conditioning: Tensor,
                 embodiment_id: Tensor) -> Tensor:
        """One DiT evaluation: noisy actions (B, 50, action_dim) at `timesteps` (1,) with that step's `conditioning`
        -> velocity (B, 50, action_dim)."""
        action_features = self.action_encoder(actions, timesteps, embodiment_id)
        if self.cfg.add_pos_embed:
            action_features = action_features + self.position_embedding.weight[: actions.shape[1]].unsqueeze(0)
        sa_embs = torch.cat([state_features, action_features], dim=1)
        out = self.model(sa_embs, context_kv, conditioning, text_bias, image_bias)
        return self.action_decoder(out, embodiment_id)[:, -actions.shape[1]:]

    def get_action(self, backbone_features: Tensor, attention_mask: Tensor, image_mask: Tensor, state: Tensor,
                   embodiment_id: Tensor, init_actions: Tensor, conditioning: Tensor | None = None) -> Tensor:
        """Euler integration from the given noise -> normalised action_pred (B, 50, action_dim).

        backbone_features (B, L, 2048); attention_mask (B, L) 0/1; image_mask (B, L) bool (input_ids ==
        <IMG_CONTEXT>); state (B, 1, 128); embodiment_id (B,) int64; init_actions (B, 50, 128); `conditioning`:
        `self.conditioning()`, computed here when not given (an export passes it as a constant).
        """
        vl_embs = self.vlln(backbone_features)
        context_kv = self.model.cross_kv(vl_embs)  # once per call, not once per Euler step
        text_bias, image_bias = cross_attention_biases(image_mask, attention_mask, vl_embs.dtype)
        state_features = self.state_encoder(state.to(vl_embs.dtype), embodiment_id)
        actions = init_actions.to(vl_embs.dtype)
        dt = 1.0 / self.cfg.num_inference_timesteps
        for step, t in enumerate(self.cfg.timestep_buckets()):
            # one timestep for the whole batch, independent of the inputs
            timesteps = torch.full((1,), t, dtype=torch.long, device=actions.device)
            step_conditioning = self.model.conditioning(timesteps) if conditioning is None else conditioning[step]
            actions = actions + dt * self.velocity(context_kv, text_bias, image_bias, state_features, actions,
                                                   timesteps, step_conditioning, embodiment_id)
        return actions


class Gr00tN16(nn.Module):
    def __init__(self, cfg: Gr00tN16Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = EagleBackbone(cfg)
        self.action_head = Gr00tN16ActionHead(cfg.action_head)
        CHECKPOINT_NAMES.attach(self)

    def setup_caches(self) -> None:
        """Recomputes the tables outside the state dict (RoPE), e.g. after weights were assigned on the meta device."""
        self.backbone.model.language_model.setup_caches()

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, state: Tensor,
                embodiment_id: Tensor, init_actions: Tensor) -> Tensor:
        """Model-space inputs -> normalised action_pred (B, 50, 128)."""
        features = self.backbone(pixel_values, input_ids, attention_mask)
        image_mask = input_ids == self.cfg.image_token_index
        return self.action_head.get_action(features, attention_mask, image_mask, state, embodiment_id, init_actions)


def unused_key_shapes(cfg: Gr00tN16Config) -> dict[str, tuple[int, ...]]:
    """The known-unused tensors of a real checkpoint: vision pooling head and the tied lm_head."""
    from gr00t_export.families.n1_6.vision import pooling_head_shapes

    shapes = {VISION_PREFIX + POOLING_HEAD_PREFIX + k: v for k, v in pooling_head_shapes(cfg.vision).items()}
    shapes["backbone.model.language_model.lm_head.weight"] = (cfg.text.vocab_size, cfg.text.hidden_size)
    return shapes
