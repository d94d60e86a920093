"""GR00T N1.5: the Eagle 2.5 backbone and the flow-matching action head under their checkpoint names."""

from __future__ import annotations

from torch import Tensor, nn

from gr00t_export.families.n1_5.config import Gr00tConfig
from gr00t_export.families.n1_5.model.action_head import FlowmatchingActionHead
from gr00t_export.families.n1_5.model.language import EagleBackbone

# Keys a real checkpoint may carry that N1.5 never reads: the SigLIP pooling head and the tied lm_head.
UNUSED_KEY_PREFIXES = (
    "backbone.eagle_model.vision_model.vision_model.head.",
    "backbone.eagle_model.language_model.lm_head.",
)


class Gr00tN15(nn.Module):
    def __init__(self, cfg: Gr00tConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = EagleBackbone(cfg)
        self.action_head = FlowmatchingActionHead(cfg.action_head)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, state: Tensor,
                embodiment_id: Tensor, init_actions: Tensor) -> Tensor:
        """Model-space inputs -> normalised action_pred (B, 16, action_dim)."""
        features = self.backbone(pixel_values, input_ids, attention_mask)
        return self.action_head.get_action(features, state, embodiment_id, init_actions)
