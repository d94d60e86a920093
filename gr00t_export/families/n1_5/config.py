"""Model configuration: dataclasses, the `tiny` and `n1.5-3b` presets, and the two JSON files they live in.

A GR00T N1.5 checkpoint splits its configuration in two: the checkpoint's `config.json`
(`backbone_cfg`, `action_head_cfg`) and the Eagle 2.5 dir's `config.json` (`vision_config`,
`text_config`). Both are read into one `Gr00tConfig` so tiny and full-size models share one code path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gr00t_export.errors import InputError
from gr00t_export.nn.dit import TransformerConfig
from gr00t_export.nn.qwen3 import TextConfig


@dataclass
class VisionConfig:
    """SigLIP vision tower (so400m shape in the real model)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class ActionHeadConfig:
    action_dim: int = 32
    action_horizon: int = 16
    hidden_size: int = 1024
    input_embedding_dim: int = 1536
    backbone_embedding_dim: int = 2048
    max_state_dim: int = 64
    max_num_embodiments: int = 32
    max_seq_len: int = 1024
    num_target_vision_tokens: int = 32
    num_inference_timesteps: int = 4
    num_timestep_buckets: int = 1000
    add_pos_embed: bool = True
    use_vlln: bool = True
    diffusion_model: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(
            num_attention_heads=32,
            attention_head_dim=48,
            num_layers=16,
            output_dim=1024,
            cross_attention_dim=2048,
            interleave_self_attention=True,
        )
    )
    vl_self_attention: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(num_attention_heads=32, attention_head_dim=64, num_layers=4)
    )


@dataclass
class Gr00tConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    select_layer: int = 12  # LLM layers kept; features = final-norm(hidden state of that layer)
    project_to_dim: int | None = None  # eagle_linear: Identity when None
    image_token_index: int = 151669
    tokens_per_image: int = 256
    compute_dtype: str = "bfloat16"

    def validate(self) -> None:
        ah, v, t = self.action_head, self.vision, self.text
        checks = [
            (v.num_patches == self.tokens_per_image, f"vision tower gives {v.num_patches} patches per image "
             f"but the processor expects {self.tokens_per_image}"),
            (0 < self.select_layer <= t.num_hidden_layers, f"select_layer {self.select_layer} outside 1.."
             f"{t.num_hidden_layers}"),
            (ah.backbone_embedding_dim == (self.project_to_dim or t.hidden_size),
             f"action_head backbone_embedding_dim {ah.backbone_embedding_dim} != backbone feature size "
             f"{self.project_to_dim or t.hidden_size}"),
            (ah.diffusion_model.inner_dim == ah.input_embedding_dim,
             f"DiT inner dim {ah.diffusion_model.inner_dim} != input_embedding_dim {ah.input_embedding_dim}"),
            (ah.diffusion_model.output_dim == ah.hidden_size,
             f"DiT output_dim {ah.diffusion_model.output_dim} != action head hidden_size {ah.hidden_size}"),
            (ah.vl_self_attention.inner_dim == ah.backbone_embedding_dim,
             f"vl_self_attention inner dim {ah.vl_self_attention.inner_dim} != {ah.backbone_embedding_dim}"),
            (t.num_attention_heads % t.num_key_value_heads == 0, "num_attention_heads not a multiple of kv heads"),
            (self.image_token_index < t.vocab_size, f"image_token_index {self.image_token_index} >= vocab_size"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"inconsistent model config: {problem}; fix config.json or the Eagle config.json")


def _tiny() -> Gr00tConfig:
    # 256 patches per image and the token layout stay real; every width shrinks.
    return Gr00tConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        text=TextConfig(
            vocab_size=1088, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        ),
        action_head=ActionHeadConfig(
            hidden_size=32,
            input_embedding_dim=48,
            backbone_embedding_dim=64,
            diffusion_model=TransformerConfig(
                num_attention_heads=4, attention_head_dim=12, num_layers=4, output_dim=32,
                cross_attention_dim=64, interleave_self_attention=True,
            ),
            vl_self_attention=TransformerConfig(num_attention_heads=4, attention_head_dim=16, num_layers=2),
        ),
        select_layer=2,
        image_token_index=1077,  # placeholder: make-checkpoint sets it from the tokenizer it trains
        compute_dtype="float32",
    )


PRESETS: dict[str, Callable[[], Gr00tConfig]] = {"tiny": _tiny, "n1.5-3b": Gr00tConfig}


def preset(name: str) -> Gr00tConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --- the two JSON files -----------------------------------------------------------------------------

def _transformer_cfg(d: TransformerConfig, dit: bool) -> dict:
    out = {
        "num_attention_heads": d.num_attention_heads,
        "attention_head_dim": d.attention_head_dim,
        "num_layers": d.num_layers,
        "dropout": 0.2,
        "final_dropout": True,
        "positional_embeddings": None,
    }
    if dit:
        out |= {
            "output_dim": d.output_dim,
            "cross_attention_dim": d.cross_attention_dim,
            "interleave_self_attention": d.interleave_self_attention,
            "norm_type": "ada_norm",
        }
    return out


def checkpoint_config_dict(cfg: Gr00tConfig) -> dict:
    """The checkpoint's `config.json`, with the field names and values of the real N1.5 file."""
    ah = cfg.action_head
    return {
        "architectures": ["GR00T_N1_5"],
        "model_type": "gr00t_n1_5",
        "action_dim": ah.action_dim,
        "action_horizon": ah.action_horizon,
        "attn_implementation": None,
        "backbone_cfg": {
            "eagle_path": "NVEagle/eagle_er-qwen3_1_7B-Siglip2_400M_stage1_5_128gpu_er_v7_1mlp_nops",
            "load_bf16": False,
            "project_to_dim": cfg.project_to_dim,
            "reproject_vision": False,
            "select_layer": cfg.select_layer,
            "tune_llm": False,
            "tune_visual": True,
            "use_flash_attention": True,
        },
        "action_head_cfg": {
            "action_dim": ah.action_dim,
            "action_horizon": ah.action_horizon,
            "add_pos_embed": ah.add_pos_embed,
            "backbone_embedding_dim": ah.backbone_embedding_dim,
            "diffusion_model_cfg": _transformer_cfg(ah.diffusion_model, dit=True),
            "hidden_size": ah.hidden_size,
            "input_embedding_dim": ah.input_embedding_dim,
            "max_action_dim": ah.action_dim,
            "max_state_dim": ah.max_state_dim,
            "model_dtype": "float32",
            "noise_beta_alpha": 1.5,
            "noise_beta_beta": 1.0,
            "noise_s": 0.999,
            "num_inference_timesteps": ah.num_inference_timesteps,
            "num_target_vision_tokens": ah.num_target_vision_tokens,
            "num_timestep_buckets": ah.num_timestep_buckets,
            "tune_diffusion_model": True,
            "tune_projector": True,
            "use_vlln": ah.use_vlln,
            "vl_self_attention_cfg": _transformer_cfg(ah.vl_self_attention, dit=False),
            "max_num_embodiments": ah.max_num_embodiments,
            "max_seq_len": ah.max_seq_len,
        },
        "compute_dtype": cfg.compute_dtype,
        "hidden_size": cfg.text.hidden_size,
        "model_dtype": "float32",
        "torch_dtype": "bfloat16" if cfg.compute_dtype == "bfloat16" else "float32",
        "transformers_version": "4.51.3",
    }


def eagle_config_dict(cfg: Gr00tConfig) -> dict:
    """The Eagle 2.5 dir's `config.json` (vision_config + text_config), as in the real file."""
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["Eagle2_5_VLForConditionalGeneration"],
        "model_type": "eagle_2_5_vl",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": v.image_size,
        "image_token_index": cfg.image_token_index,
        "max_dynamic_tiles": 12,
        "min_dynamic_tiles": 1,
        "mlp_connector_layers": 1,
        "select_layer": -1,
        "template": "qwen3-chat",
        "use_pixel_shuffle": False,
        "use_thumbnail": True,
        "text_config": {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": False,
            "head_dim": t.head_dim,
            "hidden_act": "silu",
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": t.rope_theta,
            "tie_word_embeddings": t.tie_word_embeddings,
            "vocab_size": t.vocab_size,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": v.hidden_size,
            "image_size": v.image_size,
            "intermediate_size": v.intermediate_size,
            "layer_norm_eps": v.layer_norm_eps,
            "num_attention_heads": v.num_attention_heads,
            "num_channels": v.num_channels,
            "num_hidden_layers": v.num_hidden_layers,
            "patch_size": v.patch_size,
        },
    }


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputError(f"{what} not found at {path}; point to a GR00T N1.5 checkpoint dir")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{what} at {path} is not valid JSON ({err}); restore the file from the checkpoint") from None


def _pick(d: dict, keys: list[str], where: str) -> dict:
    missing = [k for k in keys if k not in d]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; it is not a GR00T N1.5 / Eagle 2.5 config")
    return {k: d[k] for k in keys}


def _transformer_from(d: dict, where: str) -> TransformerConfig:
    base = _pick(d, ["num_attention_heads", "attention_head_dim", "num_layers"], where)
    return TransformerConfig(
        **base,
        output_dim=d.get("output_dim", 1024),
        cross_attention_dim=d.get("cross_attention_dim"),
        interleave_self_attention=bool(d.get("interleave_self_attention", False)),
    )


def read_config(checkpoint_config: Path, eagle_config: Path) -> Gr00tConfig:
    """Reads both JSON files into one config, with one clear error for anything missing or foreign."""
    top = _read_json(checkpoint_config, "config.json")
    if not isinstance(top, dict) or top.get("model_type") != "gr00t_n1_5":
        found = top.get("model_type") if isinstance(top, dict) else type(top).__name__
        raise InputError(
            f"{checkpoint_config} has model_type {found!r}, not 'gr00t_n1_5'; "
            "gr00t-export reads GR00T N1.5 checkpoints (N1 and N1.6 differ in architecture)"
        )
    eagle = _read_json(eagle_config, "Eagle config.json")
    where = str(checkpoint_config)
    bb = _pick(top, ["backbone_cfg"], where)["backbone_cfg"]
    ahd = _pick(top, ["action_head_cfg"], where)["action_head_cfg"]
    v = _pick(eagle, ["vision_config"], str(eagle_config))["vision_config"]
    t = _pick(eagle, ["text_config"], str(eagle_config))["text_config"]
    vision = VisionConfig(
        **_pick(v, ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"], "vision_config"),
        image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 14),
        num_channels=v.get("num_channels", 3), layer_norm_eps=v.get("layer_norm_eps", 1e-6),
    )
    text = TextConfig(
        **_pick(t, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads"], "text_config"),
        head_dim=t.get("head_dim", t["hidden_size"] // t["num_attention_heads"]),
        rope_theta=float(t.get("rope_theta", 1e6)), rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        max_position_embeddings=t.get("max_position_embeddings", 40960),
        tie_word_embeddings=t.get("tie_word_embeddings", True),
    )
    head = ActionHeadConfig(
        **_pick(ahd, ["action_dim", "action_horizon", "hidden_size", "input_embedding_dim",
                      "backbone_embedding_dim", "max_state_dim"], "action_head_cfg"),
        max_num_embodiments=ahd.get("max_num_embodiments", 32),
        max_seq_len=ahd.get("max_seq_len", 1024),
        num_target_vision_tokens=ahd.get("num_target_vision_tokens", 32),
        num_inference_timesteps=ahd.get("num_inference_timesteps") or 4,
        num_timestep_buckets=ahd.get("num_timestep_buckets", 1000),
        add_pos_embed=ahd.get("add_pos_embed", True),
        use_vlln=ahd.get("use_vlln", True),
        diffusion_model=_transformer_from(
            _pick(ahd, ["diffusion_model_cfg"], "action_head_cfg")["diffusion_model_cfg"], "diffusion_model_cfg"),
        vl_self_attention=_transformer_from(
            _pick(ahd, ["vl_self_attention_cfg"], "action_head_cfg")["vl_self_attention_cfg"],
            "vl_self_attention_cfg"),
    )
    if eagle.get("use_pixel_shuffle") or eagle.get("mlp_connector_layers", 1) != 1:
        raise InputError(
            f"{eagle_config} asks for pixel shuffle or a multi-layer connector; N1.5 uses neither "
            "(use the Eagle dir that came with the checkpoint)"
        )
    cfg = Gr00tConfig(
        vision=vision, text=text, action_head=head,
        select_layer=int(bb.get("select_layer", 12)), project_to_dim=bb.get("project_to_dim"),
        image_token_index=int(eagle.get("image_token_index", 151669)),
        compute_dtype=top.get("compute_dtype", "bfloat16"),
    )
    cfg.validate()
    return cfg


def config_to_dict(cfg: Gr00tConfig) -> dict:
    return asdict(cfg)
