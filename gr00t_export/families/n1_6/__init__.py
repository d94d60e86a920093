"""GR00T N1.6 (`model_type` Gr00tN1d6): config + presets, strict checkpoint reader, plain-PyTorch model,
pre/postprocessing modules, reference policy and synthetic checkpoints.

Modules: `config` (dataclasses, presets, config.json readers), `processor_files` (processor_config.json,
statistics.json, embodiment_id.json), `load` (strict reader), `vision` + `model` (the network), `video`,
`tokenizer`, `state_action` (preprocessing / decoding), `policy` (reference policy), `synthetic` (checkpoints),
`partition` + `graph_spec.yaml` (the deployable stages), `tokenizer_script` (the TorchScript tokenizer stage).
"""

from gr00t_export.families.n1_6.config import MODEL_TYPE, Gr00tN16Config, preset, read_config
from gr00t_export.families.n1_6.model import UNUSED_KEY_PREFIXES, Gr00tN16

__all__ = ["MODEL_TYPE", "Gr00tN16", "Gr00tN16Config", "UNUSED_KEY_PREFIXES", "preset", "read_config"]
