"""gr00t-export: a staged compiler for GR00T N1.5 and N1.6 policies."""

__version__ = "0.1.0"
