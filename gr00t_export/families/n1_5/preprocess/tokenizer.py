"""Eagle 2.5 (Qwen2 byte-level BPE) tokenizer and GR00T N1.5 prompt building, without transformers.

Deployment needs the exact ids NVIDIA's pipeline feeds the backbone. That pipeline is
`apply_chat_template(add_generation_prompt=True)` on the Eagle processor, then the processor's
`<image-i>` expansion, then Qwen2's tokenizer with left padding. The tokenizer is rebuilt from the
plain vocab.json/merges.txt files (`gr00t_export.text.qwen2`, shared with N1.6), and the prompt is rebuilt
as a string. `train_tiny_tokenizer` writes a small tokenizer dir of the same format for tiny test models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from gr00t_export.errors import InputError
from gr00t_export.text.qwen2 import (
    IM_END,
    IM_START,
    IMAGE_TOKEN,
    IMG_END,
    IMG_START,
    QWEN2_SPLIT_PATTERN,  # noqa: F401  (re-exported under N1.5's module)
    SYSTEM_PROMPT,
    Qwen2BPETokenizer,
    load_tokenizer,
    read_json,
)

DEFAULT_TOKENS_PER_IMAGE = 256

def format_language(instruction: str) -> str:
    """The text NVIDIA's GR00TTransform actually puts in the user turn: `str(np.array([instruction]))`.

    `_apply_vlm_processing` passes the (1,) annotation array itself, not its element, as the chat
    message text, so Jinja renders it with brackets and quotes: `['pick the apple']`. The golden ids
    contain these characters and the checkpoint was trained on them. NumPy formats a one-element str
    array as `[` + repr(element) + `]`.
    """
    return "[" + repr(instruction) + "]"


def build_prompt(
    instruction: str,
    num_images: int,
    *,
    tokens_per_image: int = DEFAULT_TOKENS_PER_IMAGE,
    wrap_as_array: bool = True,
) -> str:
    """The exact prompt string NVIDIA's Eagle processor tokenizes for one sample.

    chat_template.json with one user message [image]*num_images + [text] and add_generation_prompt
    renders `<image-i>` placeholders; the processor replaces each with `<image i><img>`, 256 (one 224px
    tile) `<IMG_CONTEXT>` and `</img>`. `wrap_as_array=False` puts the raw instruction instead of
    NVIDIA's `['...']` form (see `format_language`).
    """
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a str, got {type(instruction).__name__}; pass plain text")
    if isinstance(num_images, bool) or not isinstance(num_images, int | np.integer) or num_images < 0:
        raise InputError(f"num_images must be an int >= 0, got {num_images!r}; pass the number of views")
    text = format_language(instruction) if wrap_as_array else instruction
    images = "".join(
        f"<image {i}>{IMG_START}{IMAGE_TOKEN * tokens_per_image}{IMG_END}" for i in range(1, int(num_images) + 1)
    )
    return f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{images}{text}{IM_END}\n{IM_START}assistant\n"


class EagleTokenizer(Qwen2BPETokenizer):
    """Qwen2 byte-level BPE plus Eagle's added tokens, with GR00T N1.5's prompt and left padding."""

    DIR_HINT = "the Eagle 2.5 tokenizer dir (eagle2_hg_model)"

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokens_per_image: int = DEFAULT_TOKENS_PER_IMAGE,
        image_token: str = IMAGE_TOKEN,
        img_start: str = IMG_START,
        img_end: str = IMG_END,
    ) -> None:
        super().__init__(tokenizer)
        self.tokens_per_image = int(tokens_per_image)
        if (image_token, img_start, img_end) != (IMAGE_TOKEN, IMG_START, IMG_END):
            raise InputError(
                f"processor_config.json names image tokens {image_token!r}/{img_start!r}/{img_end!r}; "
                f"only Eagle 2.5's {IMAGE_TOKEN}/{IMG_START}/{IMG_END} are supported"
            )

    @classmethod
    def from_dir(cls, eagle_dir: str | Path) -> EagleTokenizer:
        """Build from an Eagle/Qwen2 tokenizer dir (vocab.json, merges.txt, added tokens, processor cfg)."""
        eagle_dir = Path(eagle_dir)
        tok = load_tokenizer(eagle_dir, cls.DIR_HINT)
        proc_path = eagle_dir / "processor_config.json"
        proc = read_json(proc_path, cls.DIR_HINT) if proc_path.is_file() else {}
        return cls(
            tok,
            tokens_per_image=int(proc.get("tokens_per_tile", DEFAULT_TOKENS_PER_IMAGE)),
            image_token=proc.get("image_token", IMAGE_TOKEN),
            img_start=proc.get("image_start_token", IMG_START),
            img_end=proc.get("image_end_token", IMG_END),
        )

    def build_prompt(self, instruction: str, num_images: int, *, wrap_as_array: bool = True) -> str:
        """The prompt string for one sample; see the module-level `build_prompt`."""
        return build_prompt(
            instruction, num_images, tokens_per_image=self.tokens_per_image, wrap_as_array=wrap_as_array
        )

    def encode(
        self, instructions: list[str], num_images: int, *, wrap_as_array: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask, both (B, L) int64, left padded with `<|endoftext|>` to the longest.

        No truncation, as in NVIDIA's pipeline. Any Unicode text is accepted: the NFC + byte-level
        pipeline matches the reference tokenizer exactly, non-ASCII included.
        """
        if isinstance(instructions, str) or not isinstance(instructions, list | tuple) or not instructions:
            raise InputError("instructions must be a non-empty list of str; wrap one instruction as [text]")
        return self.encode_prompts([self.build_prompt(s, num_images, wrap_as_array=wrap_as_array)
                                    for s in instructions])
