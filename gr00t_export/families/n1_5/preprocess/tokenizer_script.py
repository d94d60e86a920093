"""N1.5's deployable tokenizer stage: a TorchScript module reproducing `EagleTokenizer.encode` for ASCII text.

The BPE, split rule and constant-prompt machinery are shared (`gr00t_export.text.tokenizer_script`); this adds
N1.5's prompt (system turn, user turn with the image blocks of 256 `<IMG_CONTEXT>` each before the text, and
the generation prompt) and its rendering of the instruction as NumPy prints it (`['...']`).
"""

from pathlib import Path

import numpy as np
import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer, build_prompt
from gr00t_export.text.tokenizer_script import (
    INSTRUCTION_MARKER,
    ScriptableBPETokenizer,
    check_against,
    prompt_parts,
    save_checked,
)
from gr00t_export.text.tokenizer_script import check_seams as _check_seams  # noqa: F401  (N1.5's old name)

# Instructions the export re-encodes with both tokenizers before it accepts the artifact.
SELF_CHECK_INSTRUCTIONS: tuple[str, ...] = (
    "pick the pear from the counter and place it in the basket",
    "It's 2 o'clock: we'll \"STACK\" the 3 cubes...\n\tthen stop!",
    "",
    "  spaces  around \\ back\\slash 'quotes'  ",
    "put <img> on the <|im_end|> plate",
    "tab\there\r\nnew line\x0b\x0c\x1f\x7f end",
)


class ScriptableEagleTokenizer(ScriptableBPETokenizer):
    """Instruction strings -> (input_ids, attention_mask), both (B, L) int64, left padded with the pad id.

    Equal to `EagleTokenizer.encode(instructions, num_images)` for ASCII instructions.
    """

    num_images: int
    tokens_per_image: int
    wrap_as_array: bool

    def __init__(
        self,
        tokenizer: EagleTokenizer | str | Path,
        num_images: int = 1,
        wrap_as_array: bool = True,
    ) -> None:
        if not isinstance(tokenizer, EagleTokenizer):
            tokenizer = EagleTokenizer.from_dir(tokenizer)
        if isinstance(num_images, bool) or not isinstance(num_images, int | np.integer) or num_images < 0:
            raise InputError(f"num_images must be an int >= 0, got {num_images!r}; pass the number of views")
        prompt = build_prompt(INSTRUCTION_MARKER, int(num_images), tokens_per_image=tokenizer.tokens_per_image,
                              wrap_as_array=False)
        super().__init__(tokenizer, prompt)
        self.num_images = int(num_images)
        self.tokens_per_image = tokenizer.tokens_per_image
        self.wrap_as_array = bool(wrap_as_array)

    def instruction_text(self, text: str) -> str:
        return self.repr_wrap(text) if self.wrap_as_array else text

    @torch.jit.export
    def repr_wrap(self, text: str) -> str:
        """`str(np.array([text]))` for ASCII text: `[` + Python's repr + `]`, as NVIDIA's prompt has it."""
        quote = "'"
        if text.find("'") >= 0 and text.find('"') < 0:
            quote = '"'
        hex_digits = "0123456789abcdef"
        parts: list[str] = ["[", quote]
        for ch in text:
            code = ord(ch)
            if ch == quote or ch == "\\":
                parts.append("\\" + ch)
            elif code == 10:  # codes, not "\n" literals: TorchScript cannot reload a saved "\r" literal
                parts.append("\\n")
            elif code == 13:
                parts.append("\\r")
            elif code == 9:
                parts.append("\\t")
            elif code < 32 or code == 127:
                parts.append("\\x" + hex_digits[code // 16] + hex_digits[code % 16])
            else:
                parts.append(ch)
        parts.append(quote)
        parts.append("]")
        return "".join(parts)


def _prompt_parts(tokenizer: EagleTokenizer, num_images: int) -> tuple[str, str, list[int], list[int]]:
    """N1.5's prompt split around the instruction (see `gr00t_export.text.tokenizer_script.prompt_parts`)."""
    prompt = build_prompt(INSTRUCTION_MARKER, num_images, tokens_per_image=tokenizer.tokens_per_image,
                          wrap_as_array=False)
    return prompt_parts(tokenizer, prompt)


def check_against_python(
    module: torch.jit.ScriptModule | ScriptableEagleTokenizer,
    tokenizer: EagleTokenizer,
    instructions: tuple[str, ...] | list[str] = SELF_CHECK_INSTRUCTIONS,
) -> None:
    """Raise ValidationFailure unless `module` gives `EagleTokenizer.encode`'s ids and mask exactly."""
    num_images, wrap = int(module.num_images), bool(module.wrap_as_array)
    check_against(module, lambda case: tokenizer.encode(case, num_images, wrap_as_array=wrap), instructions,
                  "EagleTokenizer")


def export_tokenizer(
    eagle_dir_or_tokenizer: EagleTokenizer | str | Path,
    num_images: int,
    path: str | Path,
    *,
    wrap_as_array: bool = True,
) -> Path:
    """Script, save (`torch.jit.save`), reload and self-check the tokenizer stage; return its path.

    The saved module maps `List[str]` instructions to (input_ids, attention_mask) exactly like
    `EagleTokenizer.encode(instructions, num_images)`, but only for ASCII text: an instruction with a
    character above U+007F raises an error naming the instruction, character and position (from
    TorchScript it arrives as `torch.jit.Error`, carrying ValueError's message). The file is written to a
    temporary name first and moved into place only after the reloaded copy passes the self-check.

    A call takes well under a millisecond once warm, but TorchScript's profiling executor makes the first
    two calls after `torch.jit.load` take tens of ms: make one warm-up call at start-up, or call under
    `torch.jit.optimized_execution(False)`.
    """
    tokenizer = (
        eagle_dir_or_tokenizer
        if isinstance(eagle_dir_or_tokenizer, EagleTokenizer)
        else EagleTokenizer.from_dir(eagle_dir_or_tokenizer)
    )
    module = ScriptableEagleTokenizer(tokenizer, num_images, wrap_as_array=wrap_as_array)
    # looked up at call time, so the module-level name is what runs
    return save_checked(module, path, lambda loaded: check_against_python(loaded, tokenizer))
