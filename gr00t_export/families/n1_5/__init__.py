"""GR00T N1.5: config, checkpoint layout, model, pre/postprocessing, data configs and the stage partition."""

from gr00t_export.families.n1_5.family import FAMILY

__all__ = ["FAMILY"]
