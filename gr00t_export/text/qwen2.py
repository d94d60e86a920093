"""The Qwen2 byte-level BPE tokenizer with Eagle's added tokens, rebuilt from plain files without transformers.

Every GR00T family tokenizes with the same machinery: vocab.json + merges.txt, NFC, Qwen2's split regex,
byte-level symbols, the added tokens of `tokenizer_config.json` (or `added_tokens.json`), and left padding with
`<|endoftext|>`. What differs per family is only the prompt around the instruction and the Eagle dir's
processor settings, which the families add on top of `Qwen2BPETokenizer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from gr00t_export.errors import InputError

# Qwen2's pre-tokenizer split: contractions, letter runs (with one leading non-letter), single digits,
# punctuation runs, newline runs and whitespace runs (a trailing space stays with the next word).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SYSTEM_PROMPT = "You are a helpful assistant."
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<IMG_CONTEXT>"
IMG_START = "<img>"
IMG_END = "</img>"


def qwen2_tokenizer(model: models.BPE) -> Tokenizer:
    """A Qwen2 byte-level BPE pipeline around `model` (no added tokens yet)."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def read_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}; point to an intact {hint}") from err


def added_tokens(eagle_dir: Path, hint: str) -> list[tuple[int, AddedToken]]:
    """Added tokens sorted by id, from tokenizer_config.json's added_tokens_decoder or added_tokens.json."""
    config_path = eagle_dir / "tokenizer_config.json"
    config = read_json(config_path, hint) if config_path.is_file() else {}
    decoder = config.get("added_tokens_decoder")
    if decoder:
        out = []
        for key, spec in decoder.items():
            token = AddedToken(
                spec["content"],
                single_word=bool(spec.get("single_word", False)),
                lstrip=bool(spec.get("lstrip", False)),
                rstrip=bool(spec.get("rstrip", False)),
                normalized=bool(spec.get("normalized", False)),
                special=bool(spec.get("special", False)),
            )
            out.append((int(key), token))
        return sorted(out, key=lambda item: item[0])
    added_path = eagle_dir / "added_tokens.json"
    if not added_path.is_file():
        raise InputError(
            f"{eagle_dir} has neither tokenizer_config.json added_tokens_decoder nor added_tokens.json; "
            f"point to {hint}"
        )
    specials = set(config.get("additional_special_tokens") or ())
    for name in ("pad_token", "eos_token", "bos_token", "unk_token"):
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value:
            specials.add(value)
    mapping = read_json(added_path, hint)
    return sorted(
        ((int(i), AddedToken(c, normalized=False, special=c in specials)) for c, i in mapping.items()),
        key=lambda item: item[0],
    )


def load_tokenizer(eagle_dir: str | Path, hint: str) -> Tokenizer:
    """vocab.json + merges.txt + the added tokens of `eagle_dir`, each added token at its recorded id.

    `hint` names the dir the user should point to, for the error messages."""
    eagle_dir = Path(eagle_dir)
    if not eagle_dir.is_dir():
        raise InputError(f"tokenizer dir {eagle_dir} does not exist; pass {hint}")
    missing = [n for n in ("vocab.json", "merges.txt") if not (eagle_dir / n).is_file()]
    if missing:
        raise InputError(f"{eagle_dir} lacks {', '.join(missing)}; point to {hint}")
    try:
        bpe = models.BPE.from_file(str(eagle_dir / "vocab.json"), str(eagle_dir / "merges.txt"))
    except Exception as err:  # the Rust loader raises a bare Exception on malformed files
        raise InputError(
            f"cannot parse {eagle_dir}/vocab.json + merges.txt: {err}; restore the original tokenizer files"
        ) from err
    tok = qwen2_tokenizer(bpe)
    for token_id, token in added_tokens(eagle_dir, hint):
        existing = tok.token_to_id(token.content)
        if existing is None:
            if token.special:
                tok.add_special_tokens([token])
            else:
                tok.add_tokens([token])
            existing = tok.token_to_id(token.content)
        if existing != token_id:
            raise InputError(
                f"added token {token.content!r} should have id {token_id} but gets {existing}; "
                "vocab.json and the added token ids must be contiguous, restore the original files"
            )
    return tok


class Qwen2BPETokenizer:
    """Qwen2 byte-level BPE plus Eagle's added tokens: the ids prompts are built from, and left-padded encoding.

    Families subclass it (or wrap it) with their prompt; `DIR_HINT` names the tokenizer dir in error messages.
    """

    DIR_HINT = "the Eagle tokenizer dir (vocab.json, merges.txt, tokenizer_config.json)"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.image_token_id = self._require_id(IMAGE_TOKEN)
        self.img_start_id = self._require_id(IMG_START)
        self.img_end_id = self._require_id(IMG_END)
        self.pad_id = self._require_id(PAD_TOKEN)
        self.im_start_id = self._require_id(IM_START)
        self.im_end_id = self._require_id(IM_END)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def _require_id(self, content: str) -> int:
        token_id = self.tokenizer.token_to_id(content)
        if token_id is None:
            raise InputError(f"tokenizer has no {content!r} token; point to {self.DIR_HINT}")
        return int(token_id)

    @classmethod
    def from_dir(cls, eagle_dir: str | Path) -> Qwen2BPETokenizer:
        return cls(load_tokenizer(eagle_dir, cls.DIR_HINT))

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Whole prompt strings -> input_ids and attention_mask, (B, L) int64, left padded with `<|endoftext|>` to
        the longest. No truncation. Any Unicode text: NFC + byte level match the reference tokenizer exactly."""
        encodings = self.tokenizer.encode_batch(list(prompts), add_special_tokens=False)
        length = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(prompts), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(prompts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            input_ids[row, length - n :] = enc.ids
            attention_mask[row, length - n :] = 1
        return input_ids, attention_mask

    def decode(self, ids: list[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Ids back to text (debugging and tests)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
