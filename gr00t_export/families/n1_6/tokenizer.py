"""N1.6 prompt and tokenization: formalised instruction, text-first chat turn, 81 image tokens per 252 px view.

NVIDIA's `Gr00tN1d6Processor` lower-cases the instruction and strips every `[^\\w\\s]` character, builds one user
turn `[text, image_1, ..., image_n]` (text first), renders Eagle's chat template without a generation prompt, and
the Eagle processor replaces each `<image-k>` with the literal `<image k>`, `<img>`, one `<IMG_CONTEXT>` per
LLM image token and `</img>`; Qwen2's tokenizer pads on the left with `<|endoftext|>`. The tokenizer itself
(vocab.json + merges.txt + Eagle's added tokens, through the `tokenizers` library) is the shared
`gr00t_export.text.qwen2.Qwen2BPETokenizer`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gr00t_export.errors import InputError
from gr00t_export.text.qwen2 import IM_END, IM_START, IMAGE_TOKEN, IMG_END, IMG_START, SYSTEM_PROMPT, Qwen2BPETokenizer

_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")


def formalize_language(instruction: str) -> str:
    """Lower case, then every character that is neither a word character nor whitespace removed (Unicode-aware,
    as Python's `re` is for str patterns)."""
    return _NOT_WORD_OR_SPACE.sub("", instruction.lower())


def build_prompt(instruction: str, tokens_per_image: Sequence[int], formalize: bool = True) -> str:
    """The exact string NVIDIA's N1.6 processor tokenizes for one sample (images in (time, view) order)."""
    if not isinstance(instruction, str):
        raise InputError(f"instruction must be a str, got {type(instruction).__name__}; pass plain text")
    text = formalize_language(instruction) if formalize else instruction
    images = "".join(f"<image {i}>{IMG_START}{IMAGE_TOKEN * int(n)}{IMG_END}"
                     for i, n in enumerate(tokens_per_image, start=1))
    return f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{text}{images}{IM_END}\n"


class EagleBlockTokenizer(Qwen2BPETokenizer):
    """The Qwen3 tokenizer files of Eagle-Block2A-2B-v2 (same BPE machinery and added tokens as Eagle 2.5)."""

    DIR_HINT = "the Eagle-Block2A-2B-v2 dir (Isaac-GR00T's gr00t/model/modules/nvidia/Eagle-Block2A-2B-v2)"


class N16Tokenizer:
    """Instructions -> (input_ids, attention_mask) int64 (B, L), left padded, exactly as NVIDIA's N1.6 processor."""

    def __init__(self, tokenizer: Qwen2BPETokenizer, formalize: bool = True):
        self.eagle = tokenizer
        self.formalize = formalize
        self.image_token_id = tokenizer.image_token_id
        self.pad_id = tokenizer.pad_id
        self.vocab_size = tokenizer.vocab_size

    @classmethod
    def from_dir(cls, eagle_dir: str | Path, formalize: bool = True) -> N16Tokenizer:
        return cls(EagleBlockTokenizer.from_dir(eagle_dir), formalize)

    def build_prompt(self, instruction: str, tokens_per_image: Sequence[int]) -> str:
        return build_prompt(instruction, tokens_per_image, self.formalize)

    def encode(self, instructions: Sequence[str], tokens_per_image: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`tokens_per_image`: the LLM token count of each image of one sample, in (time, view) order (81 for a
        252 x 252 view). No truncation, as in NVIDIA's pipeline."""
        if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
            raise InputError("instructions must be a non-empty list of str; wrap one instruction as [text]")
        return self.eagle.encode_prompts([self.build_prompt(s, tokens_per_image) for s in instructions])

    def image_mask(self, input_ids: np.ndarray) -> np.ndarray:
        return np.asarray(input_ids) == self.image_token_id
