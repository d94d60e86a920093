"""Plain-PyTorch building blocks shared by the model families: each forward is the math and nothing else.

`layers` (attention, RoPE, RMSNorm, tanh-GELU MLP), `qwen3` (the LLM), `siglip` (the vision encoder layers),
`dit` (diffusers-style transformer blocks, timestep encoder), `embodiment` (per-embodiment layers). How a block is
spelled in an exported graph is the export stage's business (`gr00t_export.pipeline.lowering`), not the model's.
"""
