"""N1.5's stage partition: the policy as the graph spec's stages, each a module with the spec's named inputs and
outputs. The exporter writes them out; validation runs them as the PyTorch twins of the artifacts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.model import Gr00tN15
from gr00t_export.families.n1_5.policy import Transforms
from gr00t_export.families.n1_5.preprocess.state_action import ActionPostprocessor, StatePreprocessor
from gr00t_export.families.n1_5.preprocess.tokenizer_script import ScriptableEagleTokenizer
from gr00t_export.families.n1_5.preprocess.video import MultiViewVideo
from gr00t_export.spec import GraphSpec, Partition, load_graph_spec, precision_dtype


def graph_spec_path() -> Path:
    return Path(str(resources.files("gr00t_export.families.n1_5") / "graph_spec.yaml"))


# --- the stage modules --------------------------------------------------------------------------------

class _VideoStage(nn.Module):
    """One uint8 input per camera, (B, T, H_i, W_i, 3) each at its own resolution -> pixel_values (B*T*V, 3, 224,
    224) in the build precision. TorchScript has no variadic forward, hence one subclass per view count, whose
    argument names are the spec's input names."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.video = MultiViewVideo()
        self.dtype = dtype


class VideoStage(_VideoStage):
    def forward(self, frames_0: Tensor) -> Tensor:
        return self.video([frames_0]).to(self.dtype)


class VideoStage2(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor) -> Tensor:
        return self.video([frames_0, frames_1]).to(self.dtype)


class VideoStage3(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor, frames_2: Tensor) -> Tensor:
        return self.video([frames_0, frames_1, frames_2]).to(self.dtype)


class VideoStage4(_VideoStage):
    def forward(self, frames_0: Tensor, frames_1: Tensor, frames_2: Tensor, frames_3: Tensor) -> Tensor:
        return self.video([frames_0, frames_1, frames_2, frames_3]).to(self.dtype)


VIDEO_STAGES: dict[int, type[_VideoStage]] = {1: VideoStage, 2: VideoStage2, 3: VideoStage3, 4: VideoStage4}


class StateStage(nn.Module):
    """Raw state (per key, concatenated in modality order) -> model state (B, 1, 64) and embodiment id."""

    def __init__(self, state: StatePreprocessor, embodiment_id: int, dtype: torch.dtype):
        super().__init__()
        self.state = state
        self.embodiment_id = embodiment_id
        self.dtype = dtype

    def forward(self, raw_state: Tensor) -> tuple[Tensor, Tensor]:
        state, _ = self.state(raw_state)
        batch = raw_state.shape[0]
        ids = torch.full([batch], self.embodiment_id, dtype=torch.long, device=raw_state.device)
        return state[:, -1:].to(self.dtype), ids


class VisionStage(nn.Module):
    def __init__(self, model: Gr00tN15):
        super().__init__()
        self.vision_model = model.backbone.eagle_model.vision_model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.vision_model(pixel_values)


class LLMStage(nn.Module):
    """Token embedding, mlp1, image-token scatter, Qwen3 (select_layer layers) and eagle_linear in one graph."""

    def __init__(self, model: Gr00tN15):
        super().__init__()
        self.eagle_model = model.backbone.eagle_model
        self.eagle_linear = model.backbone.eagle_linear

    def forward(self, input_ids: Tensor, vit_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return self.eagle_linear(self.eagle_model(input_ids, attention_mask, vit_embeds))


class DenoisingStage(nn.Module):
    """vlln + vl_self_attention + state encoder once, then the Euler steps unrolled over shared weights.

    `backbone_attention_mask` is part of the interface but, as in N1.5, the action head attends to every
    backbone token; it enters the graph only as a no-op on the (B, 16, action_dim) noise, the smallest tensor,
    so the exported input list matches the spec. The AdaLN modulations of every step depend on the weights only:
    computed here once, they enter the graph as a constant table, so neither the timestep MLP nor any AdaLN projection
    is in the exported graph, however large (the exporter folds no MatMul, and onnxslim skips graphs over 1 GiB).
    """

    def __init__(self, model: Gr00tN15):
        super().__init__()
        self.action_head = model.action_head
        with torch.no_grad():
            self.register_buffer("conditioning", model.action_head.conditioning(), persistent=False)

    def forward(self, backbone_features: Tensor, backbone_attention_mask: Tensor, state: Tensor,
                embodiment_id: Tensor, init_actions: Tensor) -> Tensor:
        noise = init_actions + 0 * backbone_attention_mask[:, :1, None].to(init_actions.dtype)
        return self.action_head.get_action(backbone_features, state, embodiment_id, noise, self.conditioning)


class PostprocessStage(nn.Module):
    """Normalised action_pred -> un-normalised actions, one output per modality action key."""

    def __init__(self, post: ActionPostprocessor):
        super().__init__()
        self.post = post
        self.keys = [k for k, _, _ in post.key_slices]
        self.starts = [s for _, s, _ in post.key_slices]
        self.ends = [e for _, _, e in post.key_slices]

    def forward(self, action_pred: Tensor) -> dict[str, Tensor]:
        actions = self.post(action_pred.float())
        out: dict[str, Tensor] = {}
        for i, key in enumerate(self.keys):
            out[key] = actions[..., self.starts[i]:self.ends[i]]
        return out


def partition(model: Gr00tN15, transforms: Transforms, precision: str = "fp32", spec: GraphSpec | None = None
              ) -> Partition:
    """Splits a loaded model (already in `precision`) and its transforms into the spec's stages."""
    dtype = precision_dtype(precision)
    views = len(transforms.modality.video_keys)
    spec = (spec or load_graph_spec(graph_spec_path())).for_views(views)
    modules: dict[str, nn.Module] = {
        "preprocess_video": VIDEO_STAGES[views](dtype),
        "preprocess_state_action": StateStage(transforms.state, transforms.embodiment_id, dtype),
        "eagle2_tokenizer": ScriptableEagleTokenizer(transforms.tokenizer, num_images=views),
        "vit": VisionStage(model),
        "llm": LLMStage(model),
        "denoising_subgraph": DenoisingStage(model),
        "postprocess": PostprocessStage(ActionPostprocessor(transforms.modality, transforms.metadata)),
    }
    missing = [s.name for s in spec.stages if s.name not in modules]
    if missing:
        raise InputError(f"graph spec names stages this version cannot build: {', '.join(missing)}")
    ordered = {s.name: modules[s.name] for s in spec.stages}
    for m in ordered.values():
        m.eval()
    return Partition(spec=spec, modules=ordered, precision=precision, views=views)
