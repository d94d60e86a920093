"""N1.6's deployable tokenizer stage: a TorchScript module reproducing `N16Tokenizer.encode` for ASCII text.

The BPE, split rule and constant-prompt machinery are shared (`gr00t_export.text.tokenizer_script`); this adds
N1.6's prompt (system turn; user turn with the text first, then per image `<image k><img>`, one `<IMG_CONTEXT>`
per LLM image token, `</img>`; no generation prompt) and its rendering of the instruction: lower case with every
character that is neither a word character nor whitespace removed (`formalize_language`), here on ASCII.
"""

from collections.abc import Sequence
from pathlib import Path

import torch

from gr00t_export.errors import InputError
from gr00t_export.families.n1_6.tokenizer import N16Tokenizer, build_prompt, formalize_language
from gr00t_export.text.tokenizer_script import INSTRUCTION_MARKER, ScriptableBPETokenizer, check_against, save_checked

# Instructions the export re-encodes with both tokenizers before it accepts the artifact: punctuation and case
# (removed / folded by the formalisation), digits, underscores, every kind of ASCII whitespace, added-token text.
SELF_CHECK_INSTRUCTIONS: tuple[str, ...] = (
    "pick the pear from the counter and place it in the basket",
    "It's 2 o'clock: we'll \"STACK\" the 3 cubes...\n\tthen stop!",
    "",
    "  spaces  around \\ back\\slash 'quotes'  ",
    "put <img> on the <|im_end|> plate <image 2>",
    "tab\there\r\nnew line\x0b\x0c\x1c\x1f\x7f end_of_task ",
    "Pick up the RED cube; place it @ (x=3, y=-4)!!!",
)


def formalizes_to_word_or_space() -> list[bool]:
    """Per ASCII code: whether the formalisation keeps it (`[\\w\\s]`; Python's `\\s` includes 0x1C-0x1F), read off
    the Python reference itself."""
    return [formalize_language(chr(code)) != "" for code in range(128)]


class ScriptableN16Tokenizer(ScriptableBPETokenizer):
    """Instruction strings -> (input_ids, attention_mask), both (B, L) int64, left padded with the pad id.

    Equal to `N16Tokenizer.encode(instructions, tokens_per_image)` for ASCII instructions; `tokens_per_image`
    is fixed at export (one entry per image of a sample, in (time, view) order: 81 for a 252 px view).
    """

    tokens_per_image: list[int]
    num_images: int
    formalize: bool
    kept_chars: list[bool]

    def __init__(self, tokenizer: N16Tokenizer, tokens_per_image: Sequence[int]) -> None:
        counts = list(tokens_per_image)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
            raise InputError(f"tokens_per_image must be ints >= 1 (one per image), got {counts!r}")
        super().__init__(tokenizer.eagle, build_prompt(INSTRUCTION_MARKER, counts, formalize=False))
        self.tokens_per_image = [int(n) for n in counts]
        self.num_images = len(counts)
        self.formalize = bool(tokenizer.formalize)
        self.kept_chars = formalizes_to_word_or_space()

    def instruction_text(self, text: str) -> str:
        return self.formalize_text(text) if self.formalize else text

    @torch.jit.export
    def formalize_text(self, text: str) -> str:
        """`formalize_language` on ASCII text: lower case, then only word characters and whitespace kept."""
        kept: list[str] = []
        for ch in text.lower():
            code = ord(ch)
            if code < 128 and self.kept_chars[code]:
                kept.append(ch)
        return "".join(kept)


def check_against_python(module: torch.jit.ScriptModule | ScriptableN16Tokenizer, tokenizer: N16Tokenizer,
                         instructions: Sequence[str] = SELF_CHECK_INSTRUCTIONS) -> None:
    """Raise ValidationFailure unless `module` gives `N16Tokenizer.encode`'s ids and mask exactly."""
    counts = [int(n) for n in module.tokens_per_image]
    check_against(module, lambda case: tokenizer.encode(case, counts), instructions, "N16Tokenizer")


def export_tokenizer(tokenizer: N16Tokenizer, tokens_per_image: Sequence[int], path: str | Path) -> Path:
    """Script, save, reload and self-check the tokenizer stage (`check_against_python`); return its path. A failed
    check leaves nothing behind. Non-ASCII instructions raise an error naming the instruction, character and
    position (from TorchScript as `torch.jit.Error`)."""
    module = ScriptableN16Tokenizer(tokenizer, tokens_per_image)
    return save_checked(module, path, lambda loaded: check_against_python(loaded, tokenizer))
