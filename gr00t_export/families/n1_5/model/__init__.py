"""GR00T N1.5 in plain PyTorch: state-dict names of the real checkpoint, export-friendly forwards."""

from gr00t_export.families.n1_5.model.gr00t import UNUSED_KEY_PREFIXES, Gr00tN15

__all__ = ["Gr00tN15", "UNUSED_KEY_PREFIXES"]
