"""The machinery of a TorchScript tokenizer stage: Qwen2's byte-level BPE on ASCII text, without Python at run time.

A robot runtime sends instruction strings and needs the exact `input_ids`/`attention_mask` NVIDIA's pipeline
feeds the backbone, without Python or the `tokenizers` library. `ScriptableBPETokenizer` holds the byte-level BPE
tables and the constant prompt ids around the instruction (`prompt_parts` finds them in a family's prompt
rendered around a marker), so at run time only the instruction, as the family renders it (`instruction_text`),
and the plain text next to it are split with the Qwen2 pre-tokenizer rule and BPE'd. Families subclass it with
their prompt and their rendering of the instruction (N1.5: `['...']`; N1.6: lower case, punctuation removed).

Only ASCII is handled: Unicode NFC and the Unicode classes of the split regex would need tables that do not fit
TorchScript well, and robot instructions are English. Non-ASCII text is refused with a clear error (the Python
tokenizers handle any text).
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import Tensor, nn

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.text.qwen2 import Qwen2BPETokenizer

# Character classes of the Qwen2 split regex, restricted to ASCII. `\s` is Unicode White_Space
# (tab, LF, VT, FF, CR, space; not 0x1C-0x1F, unlike Python's str.isspace), `\p{L}` is a-z/A-Z,
# `\p{N}` is 0-9. CR and LF get their own class because several alternatives single them out.
CLS_LETTER = 0
CLS_DIGIT = 1
CLS_SPACE = 2
CLS_NEWLINE = 3
CLS_OTHER = 4

# Stands for the instruction in a rendered prompt while its constant parts are found.
INSTRUCTION_MARKER = "\x00INSTRUCTION\x00"


def ascii_char_classes() -> list[int]:
    """Class of each ASCII code for the split rule (see the CLS_* constants)."""
    out = []
    for code in range(128):
        ch = chr(code)
        if ch.isascii() and ch.isalpha():
            out.append(CLS_LETTER)
        elif "0" <= ch <= "9":
            out.append(CLS_DIGIT)
        elif ch in "\r\n":
            out.append(CLS_NEWLINE)
        elif ch in "\t\x0b\x0c ":
            out.append(CLS_SPACE)
        else:
            out.append(CLS_OTHER)
    return out


def byte_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes are
    shifted to code points 256 and up, in byte order, so every byte has a visible vocab symbol."""
    kept = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table = []
    shifted = 0
    for byte in range(256):
        if byte in kept:
            table.append(chr(byte))
        else:
            table.append(chr(256 + shifted))
            shifted += 1
    return table


class ScriptableBPETokenizer(nn.Module):
    """Instruction strings -> (input_ids, attention_mask), both (B, L) int64, left padded with the pad id.

    `prompt` is the family's whole prompt for one sample with `marker` where the instruction goes; the result
    equals tokenizing that prompt with the instruction (rendered by `instruction_text`) in place of the marker,
    for ASCII instructions. No state changes between calls (no cache), so it is safe to share.
    """

    # the split classes again, as TorchScript constants (scripted code cannot read module globals)
    LETTER: Final[int] = CLS_LETTER
    DIGIT: Final[int] = CLS_DIGIT
    SPACE: Final[int] = CLS_SPACE
    NEWLINE: Final[int] = CLS_NEWLINE
    OTHER: Final[int] = CLS_OTHER

    vocab: dict[str, int]
    merge_ranks: dict[str, int]
    byte_symbols: list[str]
    char_class: list[int]
    added_ids: dict[str, int]
    added_by_first_char: dict[str, list[str]]
    prefix_ids: list[int]
    suffix_ids: list[int]
    prefix_text: str
    suffix_text: str
    pad_id: int
    image_token_id: int

    def __init_subclass__(cls, **kwargs) -> None:
        # TorchScript takes attribute types (and Final constants) from the first class of the MRO that declares
        # any, without merging: give each family's subclass the declarations of every tokenizer class above it
        super().__init_subclass__(**kwargs)
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, ScriptableBPETokenizer):
                merged.update(klass.__dict__.get("__annotations__", {}))
        cls.__annotations__ = merged

    def __init__(self, tokenizer: Qwen2BPETokenizer, prompt: str, marker: str = INSTRUCTION_MARKER) -> None:
        super().__init__()
        self.pad_id = tokenizer.pad_id
        self.image_token_id = tokenizer.image_token_id
        self.vocab, self.merge_ranks = bpe_tables(tokenizer)
        self.byte_symbols = byte_to_unicode()
        self.char_class = ascii_char_classes()
        self.added_ids, self.added_by_first_char = added_token_tables(tokenizer)
        self.prefix_text, self.suffix_text, self.prefix_ids, self.suffix_ids = prompt_parts(tokenizer, prompt, marker)

    def instruction_text(self, text: str) -> str:
        """The instruction as the family's prompt holds it (families override this)."""
        return text

    def forward(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        if len(instructions) == 0:
            raise ValueError("instructions must be a non-empty list of str; wrap one instruction as [text]")
        rows: list[list[int]] = []
        longest = 0
        for index, text in enumerate(instructions):
            ids = self.encode_one(text, index)
            rows.append(ids)
            longest = max(longest, len(ids))
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, ids in enumerate(rows):
            start = longest - len(ids)
            input_ids[row, start:] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, start:] = 1
        return input_ids, attention_mask

    @torch.jit.export
    def encode_one(self, text: str, index: int = 0) -> list[int]:
        """Unpadded ids of one whole prompt; `index` only names the instruction in errors."""
        self._require_ascii(text, index)
        ids = list(self.prefix_ids)
        ids.extend(self.encode_text(self.prefix_text + self.instruction_text(text) + self.suffix_text))
        ids.extend(self.suffix_ids)
        return ids

    def _require_ascii(self, text: str, index: int) -> None:
        # TorchScript strings are UTF-8 bytes (len and indexing count bytes), so a non-ASCII character is
        # a lead byte >= 0xC0 and continuation bytes; decode the first one to name it in the error.
        position = 0
        i = 0
        n = len(text)
        while i < n:
            code = ord(text[i])
            if code > 127:
                point = code
                if torch.jit.is_scripting():  # eager Python indexes characters, not bytes
                    extra = 1 if code < 0xE0 else (2 if code < 0xF0 else 3)
                    point = code & (0x7F >> (extra + 1))
                    for j in range(i + 1, min(i + 1 + extra, n)):
                        point = point * 64 + (ord(text[j]) & 0x3F)
                hex_digits = "0123456789ABCDEF"
                digits = ""
                while point > 0 or len(digits) < 4:
                    digits = hex_digits[point % 16] + digits
                    point = point // 16
                raise ValueError(
                    "instruction "
                    + str(index)
                    + " has the non-ASCII character U+"
                    + digits
                    + " at character "
                    + str(position)
                    + "; the TorchScript tokenizer handles ASCII text only, so rewrite the instruction in"
                    + " ASCII or tokenize it in Python with the family's tokenizer"
                )
            position += 1
            i += 1

    @torch.jit.export
    def encode_text(self, text: str) -> list[int]:
        """Ids of ASCII text: added tokens matched leftmost-longest first, the text between them BPE'd."""
        ids: list[int] = []
        n = len(text)
        start = 0
        i = 0
        while i < n:
            ch = text[i]
            match = ""
            if ch in self.added_by_first_char:
                for candidate in self.added_by_first_char[ch]:  # longest first
                    if text[i : i + len(candidate)] == candidate:
                        match = candidate
                        break
            if len(match) > 0:
                if i > start:
                    ids.extend(self._encode_plain(text[start:i]))
                ids.append(self.added_ids[match])
                i += len(match)
                start = i
            else:
                i += 1
        if start < n:
            ids.extend(self._encode_plain(text[start:]))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.split(text):
            ids.extend(self._bpe(piece))
        return ids

    @torch.jit.export
    def split(self, text: str) -> list[str]:
        """Qwen2's pre-tokenizer regex on ASCII, alternative by alternative, first match wins:
        `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*`
        `|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`. Every ASCII character starts some alternative, so the pieces
        tile the text."""
        n = len(text)
        classes: list[int] = []
        for ch in text:
            code = ord(ch)
            if code > 127:
                raise ValueError("split handles ASCII text only; check the text with encode_one first")
            classes.append(self.char_class[code])
        pieces: list[str] = []
        i = 0
        while i < n:
            cls = classes[i]
            end = i
            if text[i] == "'" and i + 1 < n:
                following = text[i + 1 : i + 3].lower()
                first = following[0:1]
                if first == "s" or first == "t" or first == "m" or first == "d":
                    end = i + 2
                elif following == "re" or following == "ve" or following == "ll":
                    end = i + 3
            if end == i:
                if cls == self.LETTER or (
                    (cls == self.SPACE or cls == self.OTHER) and i + 1 < n and classes[i + 1] == self.LETTER
                ):
                    # one optional non-letter/digit/newline, then the letter run
                    end = i + 1
                    while end < n and classes[end] == self.LETTER:
                        end += 1
                elif cls == self.DIGIT:
                    end = i + 1
                elif cls == self.OTHER or (text[i] == " " and i + 1 < n and classes[i + 1] == self.OTHER):
                    # an optional literal space, the punctuation run, then any CR/LF run
                    end = i + 1
                    while end < n and classes[end] == self.OTHER:
                        end += 1
                    while end < n and classes[end] == self.NEWLINE:
                        end += 1
                else:
                    # whitespace: the run up to and including its last CR/LF; else the run minus the last
                    # space before a non-space (`\s+(?!\S)` backtracks one); else the single space
                    run_end = i
                    last_newline = -1
                    while run_end < n and (classes[run_end] == self.SPACE or classes[run_end] == self.NEWLINE):
                        if classes[run_end] == self.NEWLINE:
                            last_newline = run_end
                        run_end += 1
                    if last_newline >= 0:
                        end = last_newline + 1
                    elif run_end == n or run_end - 1 == i:
                        end = run_end
                    else:
                        end = run_end - 1
            pieces.append(text[i:end])
            i = end
        return pieces

    def _bpe(self, piece: str) -> list[int]:
        symbols: list[str] = []
        for ch in piece:
            symbols.append(self.byte_symbols[ord(ch)])
        while len(symbols) > 1:
            best = -1
            best_rank = 0
            for j in range(len(symbols) - 1):
                key = symbols[j] + " " + symbols[j + 1]
                if key in self.merge_ranks:
                    rank = self.merge_ranks[key]
                    if best < 0 or rank < best_rank:
                        best = j
                        best_rank = rank
            if best < 0:
                break
            merged = symbols[best] + symbols[best + 1]
            symbols = symbols[:best] + [merged] + symbols[best + 2 :]
        ids: list[int] = []
        for symbol in symbols:
            ids.append(self.vocab[symbol])
        return ids


def bpe_tables(tokenizer: Qwen2BPETokenizer) -> tuple[dict[str, int], dict[str, int]]:
    """BPE vocab and merge ranks keyed `"left right"` (byte-level symbols never contain a space)."""
    spec = json.loads(tokenizer.tokenizer.to_str())["model"]
    if spec.get("type") != "BPE":
        raise InputError(f"tokenizer model is {spec.get('type')!r}, not BPE; point to {tokenizer.DIR_HINT}")
    unsupported = {
        k: spec.get(k)
        for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback", "ignore_merges")
        if spec.get(k)
    }
    if unsupported:
        raise InputError(
            f"tokenizer BPE options {unsupported} are not supported by the TorchScript tokenizer; "
            "use Qwen2's plain byte-level BPE (vocab.json + merges.txt)"
        )
    vocab = {str(k): int(v) for k, v in spec["vocab"].items()}
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(spec["merges"]):
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or any(" " in symbol for symbol in pair):
            raise InputError(f"merge {merge!r} is not two space-free symbols; restore the original merges.txt")
        ranks.setdefault(f"{pair[0]} {pair[1]}", rank)
    return vocab, ranks


def added_token_tables(tokenizer: Qwen2BPETokenizer) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Added token ids by content, and contents grouped by first character, longest first."""
    added: dict[str, int] = {}
    for token_id, token in tokenizer.tokenizer.get_added_tokens_decoder().items():
        if token.lstrip or token.rstrip or token.single_word:
            raise InputError(
                f"added token {token.content!r} uses lstrip/rstrip/single_word, which the TorchScript "
                f"tokenizer does not implement; restore the tokenizer_config.json of {tokenizer.DIR_HINT}"
            )
        added[token.content] = int(token_id)
    by_first: dict[str, list[str]] = {}
    for content in sorted(added, key=lambda c: (-len(c), c)):
        by_first.setdefault(content[0], []).append(content)
    return added, by_first


def prompt_parts(tokenizer: Qwen2BPETokenizer, prompt: str, marker: str = INSTRUCTION_MARKER
                 ) -> tuple[str, str, list[int], list[int]]:
    """Split `prompt` around `marker` (the instruction) into constant ids and the plain text next to it.

    The prefix's ids are fixed up to the end of its last added token and the suffix's from the start of
    its first one: the tokenizer splits at added tokens before the regex runs, so nothing merges across
    them. Plain text between those tokens and the instruction (`user\\n` before it; N1.6's `<image 1>` after it)
    is tokenized together with the instruction, since the split regex may join characters across that seam.
    Returns (prefix_text, suffix_text, prefix_ids, suffix_ids).
    """
    if prompt.count(marker) != 1:
        raise ValidationFailure("the prompt template does not hold the instruction exactly once")
    before, after = prompt.split(marker)
    added_ids = set(tokenizer.tokenizer.get_added_tokens_decoder())
    enc_before = tokenizer.tokenizer.encode(before, add_special_tokens=False)
    fixed_end = 0
    for token_id, (_, stop) in zip(enc_before.ids, enc_before.offsets, strict=True):
        if token_id in added_ids:
            fixed_end = stop
    enc_after = tokenizer.tokenizer.encode(after, add_special_tokens=False)
    fixed_start = len(after)
    for token_id, (begin, _) in zip(enc_after.ids, enc_after.offsets, strict=True):
        if token_id in added_ids:
            fixed_start = begin
            break
    contents = [t.content for t in tokenizer.tokenizer.get_added_tokens_decoder().values()]
    check_seams(contents, before[:fixed_end], after[fixed_start:])
    prefix_ids = tokenizer.tokenizer.encode(before[:fixed_end], add_special_tokens=False).ids
    suffix_ids = tokenizer.tokenizer.encode(after[fixed_start:], add_special_tokens=False).ids
    return before[fixed_end:], after[:fixed_start], list(prefix_ids), list(suffix_ids)


def check_seams(added: list[str], fixed_before: str, fixed_after: str) -> None:
    """Refuse added tokens that could match across a seam between constant ids and the instruction.

    Added tokens are matched leftmost-longest on the whole prompt, so a token that runs from the constant
    prefix into the instruction (one that holds the prefix's last added token and goes on), or from the
    instruction into the constant suffix (one that ends in, or runs through, the start of the suffix),
    would make the pieces tokenize differently from the whole. Eagle's tokens have no such overlap.
    """
    for token in added:
        for cut in range(1, len(token)):
            head, tail = token[:cut], token[cut:]
            into_instruction = fixed_before != "" and fixed_before.endswith(head)
            into_suffix = fixed_after.startswith(tail) or (fixed_after != "" and tail.startswith(fixed_after))
            if into_instruction or into_suffix:
                raise InputError(
                    f"added token {token!r} overlaps the prompt around the instruction, so the TorchScript "
                    "tokenizer cannot keep the prompt's constant ids; use the tokenizer's original added tokens"
                )


def check_against(module: torch.jit.ScriptModule | nn.Module,
                  reference: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
                  instructions: Sequence[str], reference_name: str) -> None:
    """Raise ValidationFailure unless `module` gives `reference`'s ids and mask exactly, on each instruction alone
    and on all of them as one left-padded batch."""
    batch = list(instructions)
    for case in [[s] for s in batch] + [batch]:
        ids, mask = module(case)
        want_ids, want_mask = reference(case)
        if not (np.array_equal(ids.numpy(), want_ids) and np.array_equal(mask.numpy(), want_mask)):
            raise ValidationFailure(
                f"TorchScript tokenizer differs from {reference_name} on "
                f"{case[0] if len(case) == 1 else case!r}; this is a bug in gr00t_export, please report it with "
                "the tokenizer dir"
            )


def save_checked(module: nn.Module, path: str | Path, check: Callable[[torch.jit.ScriptModule], None]) -> Path:
    """Script `module`, save it to a temporary name, reload it and run `check` on the reloaded copy; only then
    move it to `path`. A failed check leaves nothing behind."""
    scripted = torch.jit.script(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.jit.save(scripted, str(tmp))
        check(torch.jit.load(str(tmp)))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
