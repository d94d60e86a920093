"""GR00T N1.6 (`model_type` Gr00tN1d6): config + presets, strict checkpoint reader, plain-PyTorch model,
pre/postprocessing modules, reference policy and synthetic checkpoints.

Modules: `config` (dataclasses, presets, config.json readers), `processor_files` (processor_config.json,
statistics.json, embodiment_id.json), `load` (strict reader), `vision` + `model` (the network), `video`,
`tokenizer`, `state_action` (preprocessing / decoding), `policy` (reference policy), `synthetic` (checkpoints),
`partition` + `graph_spec.yaml` (the deployable stages), `tokenizer_script` (the TorchScript tokenizer stage),
`family` (what the generic stages ask of the family).
"""

from gr00t_export.families.n1_6.family import FAMILY

__all__ = ["FAMILY"]
