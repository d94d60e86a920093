"""GR00T N1.6 model configuration: dataclasses, the `n1.6-tiny` and `n1.6-3b` presets, and their two JSON files.

An N1.6 checkpoint's `config.json` (model_type `Gr00tN1d6`) is flat: action-head sizes and `select_layer` at the
top level. The backbone's architecture is not in the checkpoint: it is the Eagle-Block2A-2B-v2 `config.json`
(`vision_config`, `text_config`) from the code's folder, passed as `--eagle_path`. Both are read into one
`Gr00tN16Config`. Hugging Face writes only the fields set on the instance, so every missing key falls back to
NVIDIA's class default (`CHECKPOINT_DEFAULTS`), not to the released 3B value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gr00t_export.errors import InputError
from gr00t_export.nn.qwen3 import TextConfig

MODEL_TYPE = "Gr00tN1d6"
EAGLE_MODEL_TYPE = "eagle_3_vl"
EAGLE_MODEL_NAME = "nvidia/Eagle-Block2A-2B-v2"
IMAGE_TOKEN_INDEX = 151669  # <IMG_CONTEXT> of the real Eagle-Block2A-2B-v2 tokenizer


@dataclass
class Siglip2VisionConfig:
    """The SigLIP2-style vision tower of Eagle-Block2A-2B-v2 (no RoPE, no windowed attention)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    num_channels: int = 3
    num_patches: int = 256  # position table entries: a square grid, resized per image
    layer_norm_eps: float = 1e-6

    @property
    def position_grid(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size**2


@dataclass
class AlternateVLDiTConfig:
    """`diffusion_model_cfg` plus what the action head passes in (cross-attention width, text cadence)."""

    num_layers: int = 32
    num_attention_heads: int = 32
    attention_head_dim: int = 48
    output_dim: int = 1024
    cross_attention_dim: int = 2048  # = backbone_embedding_dim
    interleave_self_attention: bool = True
    attend_text_every_n_blocks: int = 2

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def is_cross_attention(self, block: int) -> bool:
        return not (self.interleave_self_attention and block % 2 == 1)

    def attends_text(self, block: int) -> bool:
        """Cross blocks alternate: every `2 * attend_text_every_n_blocks`-th block sees the non-image tokens."""
        return block % (2 * self.attend_text_every_n_blocks) == 0


@dataclass
class ActionHeadConfig:
    max_state_dim: int = 128
    max_action_dim: int = 128
    action_horizon: int = 50
    hidden_size: int = 1024
    input_embedding_dim: int = 1536
    backbone_embedding_dim: int = 2048
    max_num_embodiments: int = 32
    max_seq_len: int = 1024
    num_inference_timesteps: int = 4
    num_timestep_buckets: int = 1000
    add_pos_embed: bool = True
    use_vlln: bool = True
    diffusion_model: AlternateVLDiTConfig = field(default_factory=AlternateVLDiTConfig)

    def timestep_buckets(self) -> list[int]:
        """The Euler sampler's discrete timesteps: int(k / steps * buckets), e.g. 0, 250, 500, 750."""
        steps = self.num_inference_timesteps
        return [int(k / float(steps) * self.num_timestep_buckets) for k in range(steps)]


@dataclass
class Gr00tN16Config:
    """Defaults are the released `nvidia/GR00T-N1.6-3B` (with the real Eagle-Block2A-2B-v2 backbone)."""

    vision: Siglip2VisionConfig = field(default_factory=Siglip2VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    select_layer: int = 16  # LLM layers kept; features = final norm of the last kept layer
    downsample_ratio: float = 0.5  # pixel unshuffle by 1 / ratio
    image_token_index: int = IMAGE_TOKEN_INDEX
    image_size: int = 252  # what a 256 px frame becomes after Eagle's smart_resize
    compute_dtype: str = "bfloat16"

    @property
    def unshuffle_factor(self) -> int:
        return round(1 / self.downsample_ratio)

    def tokens_per_image(self, height: int | None = None, width: int | None = None) -> int:
        """LLM tokens of one image: (H/14/2) * (W/14/2); 81 for 252 x 252."""
        step = self.vision.patch_size * self.unshuffle_factor
        return ((height or self.image_size) // step) * ((width or self.image_size) // step)

    def validate(self) -> None:
        ah, v, t, dit = self.action_head, self.vision, self.text, self.action_head.diffusion_model
        checks = [
            (v.position_grid**2 == v.num_patches, f"vision num_patches {v.num_patches} is not a square grid"),
            (v.hidden_size % v.num_attention_heads == 0, "vision hidden_size not a multiple of its heads"),
            (self.downsample_ratio in (0.5, 0.25), f"downsample_ratio {self.downsample_ratio} is not 1/2 or 1/4"),
            (self.image_size % (v.patch_size * self.unshuffle_factor) == 0,
             f"image_size {self.image_size} is not a multiple of {v.patch_size * self.unshuffle_factor}"),
            (0 < self.select_layer <= t.num_hidden_layers,
             f"select_layer {self.select_layer} outside 1..{t.num_hidden_layers}"),
            (ah.backbone_embedding_dim == t.hidden_size,
             f"backbone_embedding_dim {ah.backbone_embedding_dim} != LLM hidden_size {t.hidden_size}"),
            (dit.cross_attention_dim == ah.backbone_embedding_dim,
             f"DiT cross_attention_dim {dit.cross_attention_dim} != backbone_embedding_dim "
             f"{ah.backbone_embedding_dim}"),
            (dit.inner_dim == ah.input_embedding_dim,
             f"DiT inner dim {dit.inner_dim} != input_embedding_dim {ah.input_embedding_dim}"),
            (dit.output_dim == ah.hidden_size, f"DiT output_dim {dit.output_dim} != hidden_size {ah.hidden_size}"),
            (ah.action_horizon + 1 <= ah.max_seq_len, f"action_horizon {ah.action_horizon} >= max_seq_len"),
            (ah.input_embedding_dim % 2 == 0, "input_embedding_dim must be even (sin/cos timestep encoding)"),
            (t.num_attention_heads % t.num_key_value_heads == 0, "num_attention_heads not a multiple of kv heads"),
            (self.image_token_index < t.vocab_size,
             f"image_token_index {self.image_token_index} >= vocab_size {t.vocab_size}"),
            (ah.num_inference_timesteps > 0, "num_inference_timesteps must be positive"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"inconsistent N1.6 model config: {problem}; fix config.json or the Eagle config.json")


def _n16_3b() -> Gr00tN16Config:
    return Gr00tN16Config()


def _n16_tiny() -> Gr00tN16Config:
    """Small widths, real token layout: 14 px patches, a 16 x 16 position table, 2 x 2 unshuffle (81 tokens per
    252 px view), 50 x 128 actions, 32 embodiment rows, both kinds of cross-attention block (4 DiT blocks).
    The vocabulary and image-token id are set from the tokenizer the checkpoint is made with."""
    return Gr00tN16Config(
        vision=Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text=TextConfig(vocab_size=IMAGE_TOKEN_INDEX + 11, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096),
        action_head=ActionHeadConfig(
            hidden_size=32, input_embedding_dim=48, backbone_embedding_dim=64,
            diffusion_model=AlternateVLDiTConfig(num_layers=4, num_attention_heads=4, attention_head_dim=12,
                                                 output_dim=32, cross_attention_dim=64),
        ),
        select_layer=2,
        compute_dtype="float32",
    )


PRESETS: dict[str, Callable[[], Gr00tN16Config]] = {"n1.6-tiny": _n16_tiny, "n1.6-3b": _n16_3b}


def preset(name: str) -> Gr00tN16Config:
    if name not in PRESETS:
        raise InputError(f"unknown N1.6 preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --- config.json of the checkpoint ----------------------------------------------------------------

# NVIDIA's `Gr00tN1d6Config` class defaults (gr00t/configs/model/gr00t_n1d6.py): what a key missing from a
# checkpoint's config.json means. The released 3B overrides max_state_dim/max_action_dim (128) and
# action_horizon (50).
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "model_name": EAGLE_MODEL_NAME,
    "backbone_model_type": "eagle",
    "select_layer": 16,
    "backbone_embedding_dim": 2048,
    "max_state_dim": 29,
    "max_action_dim": 29,
    "action_horizon": 16,
    "hidden_size": 1024,
    "input_embedding_dim": 1536,
    "add_pos_embed": True,
    "use_vlln": True,
    "max_seq_len": 1024,
    "use_alternate_vl_dit": True,
    "attend_text_every_n_blocks": 2,
    "diffusion_model_cfg": {
        "num_layers": 32, "num_attention_heads": 32, "attention_head_dim": 48, "output_dim": 1024,
        "norm_type": "ada_norm", "dropout": 0.2, "final_dropout": True, "interleave_self_attention": True,
        "positional_embeddings": None,
    },
    "num_inference_timesteps": 4,
    "num_timestep_buckets": 1000,
    "max_num_embodiments": 32,
    "model_dtype": "bfloat16",
}


def checkpoint_config_dict(cfg: Gr00tN16Config) -> dict[str, Any]:
    """The checkpoint's `config.json` with the field names of NVIDIA's `Gr00tN1d6Config`, every field set
    (as NVIDIA's training writes it)."""
    ah, dit = cfg.action_head, cfg.action_head.diffusion_model
    return {
        "architectures": [MODEL_TYPE],
        "model_type": MODEL_TYPE,
        "model_name": EAGLE_MODEL_NAME,
        "backbone_model_type": "eagle",
        "model_revision": None,
        "tune_top_llm_layers": 4,
        "backbone_embedding_dim": ah.backbone_embedding_dim,
        "tune_llm": False,
        "tune_visual": False,
        "select_layer": cfg.select_layer,
        "reproject_vision": False,
        "use_flash_attention": True,
        "load_bf16": True,
        "collator_overwrite_image_inputs": False,
        "eagle_collator": True,
        "backbone_trainable_params_fp32": True,
        "image_crop_size": None,
        "image_target_size": None,
        "shortest_image_edge": 256,
        "crop_fraction": 0.95,
        "random_rotation_angle": None,
        "color_jitter_params": {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08},
        "use_albumentations_transforms": True,
        "formalize_language": True,
        "apply_sincos_state_encoding": True,
        "use_relative_action": True,
        "max_state_dim": ah.max_state_dim,
        "max_action_dim": ah.max_action_dim,
        "action_horizon": ah.action_horizon,
        "hidden_size": ah.hidden_size,
        "input_embedding_dim": ah.input_embedding_dim,
        "add_pos_embed": ah.add_pos_embed,
        "attn_dropout": 0.2,
        "use_vlln": ah.use_vlln,
        "max_seq_len": ah.max_seq_len,
        "use_alternate_vl_dit": True,
        "attend_text_every_n_blocks": dit.attend_text_every_n_blocks,
        "diffusion_model_cfg": {
            "num_layers": dit.num_layers, "num_attention_heads": dit.num_attention_heads,
            "attention_head_dim": dit.attention_head_dim, "output_dim": dit.output_dim, "norm_type": "ada_norm",
            "dropout": 0.2, "final_dropout": True, "interleave_self_attention": dit.interleave_self_attention,
            "positional_embeddings": None,
        },
        "num_inference_timesteps": ah.num_inference_timesteps,
        "noise_beta_alpha": 1.5,
        "noise_beta_beta": 1.0,
        "noise_s": 0.999,
        "num_timestep_buckets": ah.num_timestep_buckets,
        "tune_projector": True,
        "tune_diffusion_model": True,
        "tune_vlln": True,
        "state_dropout_prob": 0.0,
        "state_additive_noise_scale": 0.0,
        "max_num_embodiments": ah.max_num_embodiments,
        "model_dtype": "bfloat16",
        "torch_dtype": "bfloat16" if cfg.compute_dtype == "bfloat16" else "float32",
        "transformers_version": "4.51.3",
    }


def eagle_config_dict(cfg: Gr00tN16Config) -> dict[str, Any]:
    """An Eagle-Block2A-2B-v2 style `config.json` for `cfg` (the real file's fields; tiny widths for tiny presets)."""
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["Eagle3_VLForConditionalGeneration"],
        "model_type": EAGLE_MODEL_TYPE,
        "downsample_ratio": cfg.downsample_ratio,
        "dynamic_image_size": False,
        "image_token_index": cfg.image_token_index,
        "max_dynamic_tiles": 12,
        "min_dynamic_tiles": 1,
        "mlp_checkpoint": False,
        "mlp_connector_layers": 2,
        "pad2square": False,
        "select_layer": -1,
        "torch_dtype": "bfloat16",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_pixel_shuffle": True,
        "use_thumbnail": False,
        "text_config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
            "head_dim": t.head_dim, "hidden_act": "silu", "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "max_position_embeddings": t.max_position_embeddings,
            "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": t.rms_norm_eps, "rope_scaling": None,
            "rope_theta": t.rope_theta, "tie_word_embeddings": t.tie_word_embeddings, "torch_dtype": "bfloat16",
            "vocab_size": t.vocab_size,
        },
        "vision_config": {
            "model_type": "siglip2_vision_model", "hidden_act": "gelu_pytorch_tanh", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "layer_norm_eps": v.layer_norm_eps,
            "num_attention_heads": v.num_attention_heads, "num_channels": v.num_channels,
            "num_hidden_layers": v.num_hidden_layers, "num_patches": v.num_patches, "patch_size": v.patch_size,
            "full_attention_indexes": [], "use_rope": False, "use_windows_attn": False, "window_size": 14,
            "torch_dtype": "bfloat16",
        },
    }


def read_json(path: Path, what: str, fix: str) -> Any:
    """JSON file -> object, or one InputError naming the file and `fix`."""
    if not path.is_file():
        raise InputError(f"{what} not found at {path}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{what} at {path} is not valid JSON ({err}); {fix}") from None


def _require(d: dict, keys: list[str], where: str) -> dict:
    missing = [k for k in keys if k not in d]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; use the Eagle-Block2A-2B-v2 config.json")
    return {k: d[k] for k in keys}


def _typed(value: Any, kind: type, key: str, where: str) -> Any:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise InputError(f"{where}: {key} must be {kind.__name__}, got {value!r}; fix the file")
    return value


def read_config(checkpoint_config: str | Path, eagle_config: str | Path) -> Gr00tN16Config:
    """Both JSON files -> one validated config; one clear error for anything missing, foreign or inconsistent."""
    checkpoint_config, eagle_config = Path(checkpoint_config), Path(eagle_config)
    top = read_json(checkpoint_config, "config.json", "point --model_path at a GR00T N1.6 checkpoint")
    if not isinstance(top, dict) or top.get("model_type") != MODEL_TYPE:
        found = top.get("model_type") if isinstance(top, dict) else type(top).__name__
        raise InputError(f"{checkpoint_config} has model_type {found!r}, not {MODEL_TYPE!r}; this reader is for "
                         "GR00T N1.6 checkpoints (N1.5 is 'gr00t_n1_5')")
    eagle = read_json(eagle_config, "Eagle config.json",
                      "pass --eagle_path: Isaac-GR00T's gr00t/model/modules/nvidia/Eagle-Block2A-2B-v2 dir")
    where, ewhere = str(checkpoint_config), str(eagle_config)
    if not isinstance(eagle, dict) or eagle.get("model_type") != EAGLE_MODEL_TYPE:
        found = eagle.get("model_type") if isinstance(eagle, dict) else type(eagle).__name__
        raise InputError(f"{ewhere} has model_type {found!r}, not {EAGLE_MODEL_TYPE!r}; N1.6 needs the "
                         "Eagle-Block2A-2B-v2 dir (Eagle 2.5's eagle2_hg_model is N1.5's backbone)")

    def get(key: str, kind: type) -> Any:
        return _typed(top.get(key, CHECKPOINT_DEFAULTS[key]), kind, key, where)

    if not get("use_alternate_vl_dit", bool):
        raise InputError(f"{where} sets use_alternate_vl_dit false (a plain DiT); only the AlternateVLDiT of the "
                         "N1.6 release is supported")
    if get("backbone_model_type", str) != "eagle":
        raise InputError(f"{where} has backbone_model_type {top.get('backbone_model_type')!r}; only 'eagle' exists")
    dit_raw = top.get("diffusion_model_cfg", CHECKPOINT_DEFAULTS["diffusion_model_cfg"])
    if not isinstance(dit_raw, dict):
        raise InputError(f"{where}: diffusion_model_cfg must be a mapping; restore the checkpoint's config.json")
    dit_defaults = CHECKPOINT_DEFAULTS["diffusion_model_cfg"]

    def dit_get(key: str, kind: type) -> Any:
        return _typed(dit_raw.get(key, dit_defaults[key]), kind, f"diffusion_model_cfg.{key}", where)

    if dit_raw.get("norm_type", "ada_norm") != "ada_norm" or dit_raw.get("positional_embeddings") is not None:
        raise InputError(f"{where}: diffusion_model_cfg asks for norm_type {dit_raw.get('norm_type')!r} / positional "
                         f"embeddings {dit_raw.get('positional_embeddings')!r}; N1.6 uses ada_norm and none")
    backbone_dim = get("backbone_embedding_dim", int)
    head = ActionHeadConfig(
        max_state_dim=get("max_state_dim", int), max_action_dim=get("max_action_dim", int),
        action_horizon=get("action_horizon", int), hidden_size=get("hidden_size", int),
        input_embedding_dim=get("input_embedding_dim", int), backbone_embedding_dim=backbone_dim,
        max_num_embodiments=get("max_num_embodiments", int), max_seq_len=get("max_seq_len", int),
        num_inference_timesteps=get("num_inference_timesteps", int),
        num_timestep_buckets=get("num_timestep_buckets", int), add_pos_embed=get("add_pos_embed", bool),
        use_vlln=get("use_vlln", bool),
        diffusion_model=AlternateVLDiTConfig(
            num_layers=dit_get("num_layers", int), num_attention_heads=dit_get("num_attention_heads", int),
            attention_head_dim=dit_get("attention_head_dim", int), output_dim=dit_get("output_dim", int),
            cross_attention_dim=backbone_dim, interleave_self_attention=dit_get("interleave_self_attention", bool),
            attend_text_every_n_blocks=get("attend_text_every_n_blocks", int),
        ),
    )

    v = _require(eagle, ["vision_config"], ewhere)["vision_config"]
    t = _require(eagle, ["text_config"], ewhere)["text_config"]
    if v.get("use_rope") or v.get("use_windows_attn"):
        raise InputError(f"{ewhere}: vision_config enables RoPE or windowed attention; the N1.6 release uses "
                         "neither (use the Eagle-Block2A-2B-v2 dir that came with Isaac-GR00T's N1.6 code)")
    if not eagle.get("use_pixel_shuffle", False) or eagle.get("mlp_connector_layers", 2) != 2:
        raise InputError(f"{ewhere}: N1.6's connector is pixel unshuffle + a 2-layer MLP; this config asks for "
                         f"use_pixel_shuffle={eagle.get('use_pixel_shuffle')} mlp_connector_layers="
                         f"{eagle.get('mlp_connector_layers')}")
    if eagle.get("select_layer", -1) != -1:
        raise InputError(f"{ewhere}: select_layer {eagle.get('select_layer')} (a middle vision layer) is not "
                         "supported; N1.6 takes the last hidden state (-1)")
    vision = Siglip2VisionConfig(
        **_require(v, ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"],
                   "vision_config"),
        patch_size=v.get("patch_size", 14), num_channels=v.get("num_channels", 3),
        num_patches=v.get("num_patches", 256), layer_norm_eps=v.get("layer_norm_eps", 1e-6),
    )
    text = TextConfig(
        **_require(t, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads"], "text_config"),
        head_dim=t.get("head_dim", t["hidden_size"] // t["num_attention_heads"]),
        rope_theta=float(t.get("rope_theta", 1e6)), rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        max_position_embeddings=t.get("max_position_embeddings", 40960),
        tie_word_embeddings=t.get("tie_word_embeddings", True),
    )
    cfg = Gr00tN16Config(
        vision=vision, text=text, action_head=head, select_layer=get("select_layer", int),
        downsample_ratio=float(eagle.get("downsample_ratio", 0.5)),
        image_token_index=int(eagle.get("image_token_index", IMAGE_TOKEN_INDEX)),
        compute_dtype=str(top.get("model_dtype", CHECKPOINT_DEFAULTS["model_dtype"])),
    )
    cfg.validate()
    return cfg


def config_to_dict(cfg: Gr00tN16Config) -> dict[str, Any]:
    return asdict(cfg)
