"""N1.6's stage partition: the policy as the graph spec's stages, each a module with the spec's named inputs and
outputs. The exporter writes them out (TorchScript pre/post-processing, three ONNX graphs); validation runs them
as the PyTorch twins of the artifacts.

- `preprocess_video`: per camera, NVIDIA's eval image transform and Eagle's bicubic resize (`video`).
- `preprocess_state_action`: sin/cos or normalised state, padded to 128; the embodiment's projector row.
- `eagle2_tokenizer`: formalised instruction in N1.6's text-first prompt (`tokenizer_script`).
- `vit`: SigLIP2 tower + post_layernorm, 2 x 2 pixel unshuffle, `mlp1`. The position table resized to the build's
  image size depends on the weights only, so it is computed here once and enters the graph as a constant.
- `llm`: token embedding, the image-token scatter, the kept Qwen3 layers and the final norm.
- `denoising_subgraph`: `vlln`, the two cross-attention key masks (from input_ids / attention_mask), the state
  encoder, then the Euler steps over the AlternateVLDiT unrolled on shared weights; the timesteps are the same for
  every sample, so their embeddings and every AdaLN modulation are computed here once and enter the graph as a
  constant table.
- `postprocess`: un-normalised actions, relative keys made absolute against the raw state, one output per key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.config import Gr00tN16Config
from gr00t_export.families.n1_6.model import Gr00tN16, pixel_unshuffle_tokens
from gr00t_export.families.n1_6.policy import Transforms
from gr00t_export.families.n1_6.state_action import ActionDecoder, StateEncoder
from gr00t_export.families.n1_6.tokenizer_script import ScriptableN16Tokenizer
from gr00t_export.families.n1_6.video import VideoPreprocessor, smart_resize
from gr00t_export.spec import GraphSpec, Partition, load_graph_spec, precision_dtype


def graph_spec_path() -> Path:
    return Path(str(resources.files("gr00t_export.families.n1_6") / "graph_spec.yaml"))


def image_size(transforms: Transforms) -> tuple[int, int]:
    """(height, width) of every image the video stage produces: the eval transform's square, after smart_resize."""
    edge = transforms.processor.shortest_image_edge
    return smart_resize(edge, edge)


def tokens_per_image(cfg: Gr00tN16Config, transforms: Transforms) -> list[int]:
    """LLM image tokens of each image of one sample, in (time, view) order: 81 per 252 px view."""
    video = transforms.modalities.video
    return [cfg.tokens_per_image(*image_size(transforms))] * (len(video.delta_indices) * len(video.modality_keys))


def stage_dims(cfg: Gr00tN16Config, transforms: Transforms) -> dict[str, int]:
    """The graph spec's dims that are fixed per build (everything but batch, num_images, seq_len, the cameras'
    height_<i>/width_<i>, and each action key's `key_dim`: see `action_key_dims`)."""
    ah, modalities = cfg.action_head, transforms.modalities
    height, _ = image_size(transforms)
    return {
        "video_horizon": len(modalities.video.delta_indices), "state_horizon": len(modalities.state.delta_indices),
        "raw_state_dim": transforms.state.raw_dim, "image_size": height,
        "image_tokens": cfg.tokens_per_image(height, height), "backbone_dim": ah.backbone_embedding_dim,
        "max_state_dim": ah.max_state_dim, "max_action_dim": ah.max_action_dim, "action_horizon": ah.action_horizon,
        "embodiment_horizon": transforms.decoder.horizon,
    }


def action_key_dims(decoder: ActionDecoder) -> dict[str, int]:
    """`action.<key>` -> its width (the spec's `key_dim`), in the postprocess stage's output order."""
    return {f"action.{key}": end - start for key, start, end in decoder.key_slices}


# --- the stage modules --------------------------------------------------------------------------------

class _VideoStage(nn.Module):
    """One uint8 input per camera, (B, T, H_i, W_i, 3) each at its own resolution -> pixel_values (B*T*V, 3, 252,
    252) in (batch, time, view) order, in the build precision. TorchScript has no variadic forward, hence one
    subclass per view count, whose argument names are the spec's input names."""

    def __init__(self, shortest_edge: int, crop_fraction: float, dtype: torch.dtype):
        super().__init__()
        self.video = VideoPreprocessor(shortest_edge, crop_fraction)
        self.dtype = dtype

    def images(self, cameras: list[Tensor]) -> Tensor:
        per_camera: list[Tensor] = []
        for frames in cameras:
            torch._assert(frames.dim() == 5, "each camera input must be uint8 (B, T, H, W, 3)")
            per_camera.append(self.video(frames.flatten(0, 1)))
        return torch.stack(per_camera, dim=1).flatten(0, 1).to(self.dtype)


class VideoStage(_VideoStage):
    def forward(self, frames_0: Tensor) -> Tensor:
        return self.images([frames_0])


class VideoStage2(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor) -> Tensor:
        return self.images([frames_0, frames_1])


class VideoStage3(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor, frames_2: Tensor) -> Tensor:
        return self.images([frames_0, frames_1, frames_2])


class VideoStage4(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor, frames_2: Tensor, frames_3: Tensor) -> Tensor:
        return self.images([frames_0, frames_1, frames_2, frames_3])


VIDEO_STAGES: dict[int, type[_VideoStage]] = {1: VideoStage, 2: VideoStage2, 3: VideoStage3, 4: VideoStage4}
MAX_VIEWS = len(VIDEO_STAGES)


class StateStage(nn.Module):
    """Raw state (B, T, D_raw) float32, keys concatenated in modality order -> model state (B, T, 128) in the build
    precision, and the embodiment's projector row (B,)."""

    def __init__(self, encoder: StateEncoder, embodiment_id: int, dtype: torch.dtype):
        super().__init__()
        self.encoder = encoder
        self.embodiment_id = embodiment_id
        self.dtype = dtype

    def forward(self, raw_state: Tensor) -> tuple[Tensor, Tensor]:
        ids = torch.full([raw_state.shape[0]], self.embodiment_id, dtype=torch.long, device=raw_state.device)
        return self.encoder(raw_state).to(self.dtype), ids


class VisionStage(nn.Module):
    """pixel_values (N, 3, S, S) -> image_embeds (N, (S/28)^2, llm_hidden); each image attends only to itself."""

    def __init__(self, model: Gr00tN16, size: int):
        super().__init__()
        eagle = model.backbone.model
        tower = eagle.vision_model
        self.embeddings = tower.embeddings
        self.encoder = tower.encoder
        self.post_layernorm = tower.post_layernorm
        self.mlp1 = eagle.mlp1
        self.unshuffle = eagle.unshuffle
        self.grid = size // tower.embeddings.patch_size
        with torch.no_grad():  # fp32, cast where it is added, as the reference does
            table = tower.embeddings.position_table(self.grid, self.grid)
        self.register_buffer("position_table", table, persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.embeddings.patch_embeds(pixel_values)
        x = self.post_layernorm(self.encoder(x + self.position_table.to(x.dtype)))
        return self.mlp1(pixel_unshuffle_tokens(x, self.grid, self.grid, self.unshuffle))


class LLMStage(nn.Module):
    """Token embedding, the image-token scatter (k-th `<IMG_CONTEXT>` takes the k-th image token, images in
    (batch, time, view) order) and the Qwen3 layers with the final norm."""

    def __init__(self, model: Gr00tN16):
        super().__init__()
        self.eagle = model.backbone.model

    def forward(self, input_ids: Tensor, image_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return self.eagle(input_ids, attention_mask, image_embeds.flatten(0, 1))


class DenoisingStage(nn.Module):
    """vlln, masks and state encoder once, then the Euler steps unrolled over shared weights -> action_pred.

    The AdaLN modulations of every step (`Gr00tN16ActionHead.conditioning`) depend on the weights only: they are
    computed here once and enter the graph as a constant table, so neither the timestep MLP nor any AdaLN projection
    is in the exported graph, however large it is (no optimiser pass needed)."""

    def __init__(self, model: Gr00tN16):
        super().__init__()
        self.action_head = model.action_head
        self.image_token_index = model.cfg.image_token_index
        with torch.no_grad():
            self.register_buffer("conditioning", model.action_head.conditioning(), persistent=False)

    def forward(self, backbone_features: Tensor, backbone_attention_mask: Tensor, input_ids: Tensor, state: Tensor,
                embodiment_id: Tensor, init_actions: Tensor) -> Tensor:
        image_mask = input_ids == self.image_token_index
        return self.action_head.get_action(backbone_features, backbone_attention_mask, image_mask, state,
                                           embodiment_id, init_actions, self.conditioning)


class PostprocessStage(nn.Module):
    """Normalised action_pred (B, 50, 128) and the raw state -> `action.<key>` (B, horizon, d) float32 per key."""

    def __init__(self, decoder: ActionDecoder):
        super().__init__()
        self.decoder = decoder
        self.names = list(action_key_dims(decoder))
        self.starts = [s for _, s, _ in decoder.key_slices]
        self.ends = [e for _, _, e in decoder.key_slices]

    def forward(self, action_pred: Tensor, raw_state: Tensor) -> dict[str, Tensor]:
        actions = self.decoder(action_pred, raw_state)
        out: dict[str, Tensor] = {}
        for i, name in enumerate(self.names):
            out[name] = actions[..., self.starts[i]:self.ends[i]]
        return out


def partition(model: Gr00tN16, transforms: Transforms, precision: str = "fp32", spec: GraphSpec | None = None
              ) -> Partition:
    """Splits a loaded model (already in `precision`) and its transforms into the spec's stages."""
    dtype = precision_dtype(precision)
    if transforms.tokenizer.image_token_id != model.cfg.image_token_index:
        raise InputError(f"tokenizer's <IMG_CONTEXT> id {transforms.tokenizer.image_token_id} != the model's "
                         f"image_token_index {model.cfg.image_token_index}; use the matching Eagle dir")
    views = len(transforms.modalities.video.modality_keys)
    spec = (spec or load_graph_spec(graph_spec_path())).for_views(views)
    height, width = image_size(transforms)
    if height != width:
        raise InputError(f"the image transform gives {height} x {width} images; the exported vision stage needs "
                         "square ones (shortest_image_edge in processor_config.json)")
    processor = transforms.processor
    modules: dict[str, nn.Module] = {
        "preprocess_video": VIDEO_STAGES[views](processor.shortest_image_edge, processor.crop_fraction, dtype),
        "preprocess_state_action": StateStage(transforms.state, transforms.embodiment_id, dtype),
        "eagle2_tokenizer": ScriptableN16Tokenizer(transforms.tokenizer, tokens_per_image(model.cfg, transforms)),
        "vit": VisionStage(model, height),
        "llm": LLMStage(model),
        "denoising_subgraph": DenoisingStage(model),
        "postprocess": PostprocessStage(transforms.decoder),
    }
    missing = [s.name for s in spec.stages if s.name not in modules]
    if missing:
        raise InputError(f"graph spec names stages this version cannot build: {', '.join(missing)}")
    ordered = {s.name: modules[s.name] for s in spec.stages}
    for m in ordered.values():
        m.eval()
    return Partition(spec=spec, modules=ordered, precision=precision, views=views)
