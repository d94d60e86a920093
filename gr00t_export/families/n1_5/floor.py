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
    n_cross = sum(not (dit.interleave_self_attention and i % 2 == 1) for i in range(dit.num_layers))
    # per Euler step on the 49 state/future/action tokens: q and out projections and the FFN of every block, k and v
    # of the self-attention blocks, proj_out_2; the AdaLN/timestep path is a constant table (not in the graph)
    step_params = dit.num_layers * 10 * d * d + (dit.num_layers - n_cross) * 2 * d * d + d * dit.output_dim
    # the cross blocks' k and v of the VL tokens: once per call, on seq_len tokens
    cross_kv = n_cross * 2 * d * (dit.cross_attention_dim or d)
    vl = ah.vl_self_attention.inner_dim
    vlsa_params = ah.vl_self_attention.num_layers * 12 * vl * vl
    enc = 3 * d * d + d * ah.action_dim + ah.hidden_size**2
    images, tokens = views, 49
    once = vlsa_params + cross_kv
    stages = [
        ("vit", vit_params, 2 * vit_params * 256 * images, vit_params),
        ("llm", llm_params, 2 * llm_params * seq_len, llm_params),
        # the DiT re-reads its per-step weights every Euler step
        ("denoising_subgraph", once + step_params + enc, 2 * once * seq_len + steps * 2 * (step_params + enc) * tokens,
         once + steps * (step_params + enc)),
    ]
    out = []
    for name, params, flops, read in stages:
        read_ms = read * bytes_per_param / (bandwidth_tbs * 1e12) * 1e3
        compute_ms = flops / (peak_tflops * 1e12) * 1e3
        out.append({"stage": name, "params_M": params / 1e6, "gflop": flops / 1e9, "weight_read_ms": read_ms,
                    "compute_ms": compute_ms, "floor_ms": max(read_ms, compute_ms)})
    return out
