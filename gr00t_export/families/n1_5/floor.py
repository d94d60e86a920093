"""The N1.5 floor: weight bytes and matmul FLOPs per model stage, from the config, at the GPU's datasheet rates."""

from __future__ import annotations


def floor_analysis(cfg, seq_len: int, views: int, steps: int, bytes_per_param: int = 2,
                   bandwidth_tbs: float = 3.35, peak_tflops: float = 989.0) -> list[dict]:
    """Weight bytes and matmul FLOPs per stage from the config: the time below which no runtime can go."""
    v, t, ah = cfg.vision, cfg.text, cfg.action_head
    vit_params = v.num_hidden_layers * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    llm_layer = (t.hidden_size * t.head_dim * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
                 + 3 * t.hidden_size * t.intermediate_size)
    llm_params = cfg.select_layer * llm_layer + v.hidden_size * t.hidden_size
    d, dit = ah.input_embedding_dim, ah.diffusion_model
    dit_block = 2 * d * d + 2 * d * (dit.cross_attention_dim or d) + 8 * d * d + 2 * d * d
    dit_params = dit.num_layers * dit_block + 4 * d * d
    vl = ah.vl_self_attention.inner_dim
    vlsa_params = ah.vl_self_attention.num_layers * 12 * vl * vl
    enc = 3 * d * d + d * ah.action_dim + ah.hidden_size**2
    images, tokens = views, 49
    stages = [
        ("vit", vit_params, 2 * vit_params * 256 * images),
        ("llm", llm_params, 2 * llm_params * seq_len),
        ("denoising_subgraph", vlsa_params + dit_params + enc,
         2 * vlsa_params * seq_len + steps * 2 * (dit_params + enc) * tokens),
    ]
    out = []
    for name, params, flops in stages:
        read_ms = params * bytes_per_param / (bandwidth_tbs * 1e12) * 1e3
        # the DiT re-reads its weights every Euler step
        if name == "denoising_subgraph":
            read_ms = (vlsa_params + steps * (dit_params + enc)) * bytes_per_param / (bandwidth_tbs * 1e12) * 1e3
        compute_ms = flops / (peak_tflops * 1e12) * 1e3
        out.append({"stage": name, "params_M": params / 1e6, "gflop": flops / 1e9, "weight_read_ms": read_ms,
                    "compute_ms": compute_ms, "floor_ms": max(read_ms, compute_ms)})
    return out
