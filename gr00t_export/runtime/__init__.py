"""Running exported stages: one runner interface, the pipeline runner, the exported policy."""
