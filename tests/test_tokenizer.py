"""Eagle tokenizer and GR00T prompt: golden ids, transformers oracle, tiny tokenizer layout."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gr00t_export.errors import InputError
from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer, build_prompt, format_language
from gr00t_export.text.tiny import ADDED_TOKENS, train_tiny_tokenizer

GOLDEN_KEY = "obs.annotation.human.action.task_description"

NON_ASCII = [
    "héllo wörld, put the crème brûlée on the plate",
    "e\u0301 cafe\u0301 (decomposed accents, NFC folds them)",
    "漢字のりんごを皿に置いて",
    "🍎 pick the apple 🍌 then the banana 👍🏽",
    "ضع التفاحة في الصحن",
    "ﬁnd the ﬂask Ω µ ẞ ß İ ı",
    "\u00a0nbsp\u2003em space\u200bzero width",
    "한국어 로봇 명령",
    "ﾊﾝｶｸ ｶﾅ",
    "naïve façade — “quoted” ‘single’ …",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[Path, dict[str, int], int]:
    out = tmp_path_factory.mktemp("tiny_tok")
    special_ids, total = train_tiny_tokenizer(out, vocab_size=1024, seed=0)
    return out, special_ids, total


def _hf_ids(hf, prompts: list[str]) -> list[list[int]]:
    return hf(prompts, add_special_tokens=False)["input_ids"]


def _our_ids(tok: EagleTokenizer, prompts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.tokenizer.encode_batch(prompts, add_special_tokens=False)]


def _render_chat_template(template: str, text, num_images: int) -> str:
    """Render a chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    jinja2_sandbox = pytest.importorskip("jinja2.sandbox")
    env = jinja2_sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    content = [{"type": "image", "image": None} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return env.from_string(template).render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)


def _expand_images(prompt: str, num_images: int, processor_cfg: dict) -> str:
    """The Eagle processor's placeholder expansion for 1-tile images."""
    for i in range(1, num_images + 1):
        prompt = prompt.replace(
            f"<image-{i}>",
            f"<image {i}>{processor_cfg['image_start_token']}"
            + processor_cfg["image_token"] * processor_cfg["tokens_per_tile"]
            + processor_cfg["image_end_token"],
            1,
        )
    return prompt


def _robot_instructions() -> list[str]:
    verbs = ["pick", "place", "Put", "move", "grab", "open", "close", "push", "pour", "STACK"]
    objects = ["apple", "sweet potato", "red cup", "bottle", "cube #3", "can's lid", "drawer"]
    places = ["counter", "plate", "basket", "top shelf", "sink", "bin 2"]
    tails = ["", ".", "!", " now", " carefully.", "  then stop", " (left hand)", "\n"]
    return [
        f"{v} the {o} from the {p} and place it in the {q}{t}"
        for v, o, p, q, t in itertools.product(verbs, objects, places, places[:2], tails[:4])
    ][::3] + [f"{v} {o}{t}" for v, o, t in itertools.product(verbs, objects, tails)]


def _fuzz_instructions(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    pieces = string.ascii_letters + string.digits + string.punctuation + " \t\n"
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 12)):
            kind = rng.random()
            if kind < 0.5:
                parts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
            elif kind < 0.7:
                parts.append(rng.choice([" ", "  ", "\t", "\n", "\r\n", "   \n ", "\n\n"]) * rng.randint(1, 3))
            elif kind < 0.85:
                parts.append(str(rng.randint(0, 10**6)))
            else:
                parts.append(rng.choice(["'s", "'T", "'re", "'ve", "'LL", "'d", "'m", "...", "!?", "--"]))
        out.append("".join(parts))
    return out


# --- real files -----------------------------------------------------------------------------------


def test_real_tokenizer_id_facts(eagle: EagleTokenizer) -> None:
    assert eagle.image_token_id == 151669
    assert eagle.img_start_id == 151670
    assert eagle.img_end_id == 151671
    assert eagle.im_start_id == 151644
    assert eagle.im_end_id == 151645
    assert eagle.pad_id == 151643
    assert eagle.vocab_size == 151680
    assert eagle.tokens_per_image == 256


def test_golden_ids_exact(eagle: EagleTokenizer, golden_vectors) -> None:
    instruction = str(golden_vectors[GOLDEN_KEY][0])
    ids, mask = eagle.encode([instruction], 1)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, golden_vectors["transformed.eagle_input_ids"])
    np.testing.assert_array_equal(mask, golden_vectors["transformed.eagle_attention_mask"])
    assert ids.shape == (1, 297)
    assert int((ids == eagle.image_token_id).sum()) == 256


def test_golden_prompt_wraps_instruction_like_numpy(eagle: EagleTokenizer, golden_vectors) -> None:
    """NVIDIA passes the (1,) annotation array as text, so the prompt carries `['...']`."""
    instruction = str(golden_vectors[GOLDEN_KEY][0])
    decoded = eagle.decode(golden_vectors["transformed.eagle_input_ids"][0])
    assert f"</img>['{instruction}']<|im_end|>" in decoded
    assert decoded == eagle.build_prompt(instruction, 1)
    raw_ids, _ = eagle.encode([instruction], 1, wrap_as_array=False)
    assert raw_ids.shape[1] < 297


def test_format_language_equals_numpy_str() -> None:
    samples = _fuzz_instructions(200, seed=7) + NON_ASCII + ["it's", 'say "hi"', "both ' and \"", "", "\\"]
    for s in samples:
        assert format_language(s) == str(np.array([s])), repr(s)


def test_build_prompt_matches_real_chat_template(real_eagle_dir: Path) -> None:
    template = json.loads((real_eagle_dir / "chat_template.json").read_text())["chat_template"]
    processor_cfg = json.loads((real_eagle_dir / "processor_config.json").read_text())
    for n in (0, 1, 2, 3):
        for text in ["pick the apple", "it's 2 cups\n", "x" * 70]:
            rendered = _render_chat_template(template, np.array([text]), n)
            assert _expand_images(rendered, n, processor_cfg) == build_prompt(text, n), (n, text)
            rendered_raw = _render_chat_template(template, text, n)
            assert _expand_images(rendered_raw, n, processor_cfg) == build_prompt(text, n, wrap_as_array=False)


def test_oracle_ascii_1000_plus(eagle: EagleTokenizer, hf_real) -> None:
    instructions = _robot_instructions() + _fuzz_instructions(600)
    # special-token text inside an instruction is matched as the special token, like transformers does
    instructions += ["put <img> on the <|im_end|> plate", "<IMG_CONTEXT><think>x</think><|endoftext|>"]
    assert len(instructions) >= 1000
    prompts = []
    for i, s in enumerate(instructions):
        prompts.append(build_prompt(s, 1 + i % 2, wrap_as_array=i % 3 != 0))
    ours = _our_ids(eagle, prompts)
    theirs = _hf_ids(hf_real, prompts)
    mismatches = [p for p, a, b in zip(prompts, ours, theirs, strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(prompts)} differ, first: {mismatches[0]!r}"
    # and the raw instruction text alone, no prompt around it
    assert _our_ids(eagle, instructions) == _hf_ids(hf_real, instructions)


def test_non_ascii_exact_against_oracle(eagle: EagleTokenizer, hf_real) -> None:
    """Decision: non-ASCII is accepted, since NFC + byte-level BPE reproduce the reference ids exactly."""
    prompts = [build_prompt(s, 1) for s in NON_ASCII] + [build_prompt(s, 2, wrap_as_array=False) for s in NON_ASCII]
    assert _our_ids(eagle, prompts) == _hf_ids(hf_real, prompts)
    ids, mask = eagle.encode(NON_ASCII, 1)
    assert ids.shape[0] == len(NON_ASCII) and mask.sum(1).min() > 256
    assert eagle.decode(ids[1][mask[1] == 1]).endswith("<|im_start|>assistant\n")


def test_batch_left_padding(eagle: EagleTokenizer) -> None:
    texts = ["pick the apple", "pick the sweet potato from the counter and place it in the plate", "go"]
    ids, mask = eagle.encode(texts, 2)
    singles = [eagle.encode([t], 2) for t in texts]
    assert ids.shape == (3, max(s[0].shape[1] for s in singles))
    for row, (single_ids, single_mask) in enumerate(singles):
        n = single_ids.shape[1]
        assert mask[row].sum() == n
        np.testing.assert_array_equal(ids[row, -n:], single_ids[0])
        np.testing.assert_array_equal(mask[row, -n:], single_mask[0])
        assert (ids[row, :-n] == eagle.pad_id).all() and (mask[row, :-n] == 0).all()
    assert mask[1].all()
    assert int((ids == eagle.image_token_id).sum()) == 3 * 2 * 256


def test_missing_files_and_bad_input(tmp_path: Path, eagle: EagleTokenizer) -> None:
    with pytest.raises(InputError, match="does not exist"):
        EagleTokenizer.from_dir(tmp_path / "nope")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(InputError, match="merges.txt"):
        EagleTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(InputError, match="vocab.json, merges.txt"):
        EagleTokenizer.from_dir(tmp_path)
    with pytest.raises(InputError, match="non-empty list"):
        eagle.encode("pick the apple", 1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="non-empty list"):
        eagle.encode([], 1)
    with pytest.raises(InputError, match="num_images"):
        eagle.encode(["x"], -1)
    with pytest.raises(InputError, match="must be a str"):
        eagle.encode([3], 1)  # type: ignore[list-item]


# --- tiny tokenizer --------------------------------------------------------------------------------


def test_tiny_layout_matches_real(tiny_dir, real_eagle_dir: Path) -> None:
    out, special_ids, total = tiny_dir
    real = json.loads((real_eagle_dir / "added_tokens.json").read_text())
    tiny = json.loads((out / "added_tokens.json").read_text())
    assert set(tiny) == set(real)
    for content, real_id in real.items():
        assert tiny[content] - 1024 == real_id - 151643, content
    assert len(json.loads((out / "vocab.json").read_text())) == 1024
    assert total == 1024 + len(ADDED_TOKENS) == 1061
    assert special_ids["pad_id"] == 1024 and special_ids["im_start_id"] == 1025
    assert special_ids["im_end_id"] == 1026
    assert (special_ids["image_token_id"], special_ids["img_start_id"], special_ids["img_end_id"]) == (
        1050,
        1051,
        1052,
    )
    real_cfg = json.loads((real_eagle_dir / "tokenizer_config.json").read_text())
    tiny_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert [v["content"] for v in tiny_cfg["added_tokens_decoder"].values()] == [
        v["content"] for v in real_cfg["added_tokens_decoder"].values()
    ]
    assert [v["special"] for v in tiny_cfg["added_tokens_decoder"].values()] == [
        v["special"] for v in real_cfg["added_tokens_decoder"].values()
    ]
    assert tiny_cfg["additional_special_tokens"] == real_cfg["additional_special_tokens"]


def test_tiny_loads_with_eagle_tokenizer(tiny_dir) -> None:
    out, special_ids, total = tiny_dir
    tok = EagleTokenizer.from_dir(out)
    assert tok.vocab_size == total
    assert tok.image_token_id == special_ids["image_token_id"]
    assert tok.pad_id == special_ids["pad_id"]
    assert tok.tokens_per_image == 256
    ids, mask = tok.encode(["pick the sweet potato from the counter", "go"], 1)
    assert ids.max() < total and (ids == tok.image_token_id).sum() == 512
    assert mask[0].all() and ids[1, 0] == tok.pad_id
    word_tokens = tok.tokenizer.encode("pick the sweet potato from the counter").tokens
    assert len(word_tokens) <= 8  # the BPE learned the robot words


def test_tiny_deterministic(tiny_dir, tmp_path: Path) -> None:
    out, _, _ = tiny_dir
    train_tiny_tokenizer(tmp_path / "again", vocab_size=1024, seed=0)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    assert names == sorted(
        [
            "added_tokens.json",
            "chat_template.json",
            "merges.txt",
            "preprocessor_config.json",
            "processor_config.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.json",
        ]
    )
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # a fresh process (different Python and Rust hash seeds) gives the same bytes
    code = (
        "import hashlib,sys,pathlib;from gr00t_export.text.tiny import train_tiny_tokenizer;"
        "p=pathlib.Path(sys.argv[1]);train_tiny_tokenizer(p,1024,0);"
        "print(hashlib.sha256(b''.join((p/n).read_bytes() for n in sorted(x.name for x in p.iterdir())))"
        ".hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "proc")], capture_output=True, text=True, env=env, check=True
    )
    here = hashlib.sha256(b"".join((out / n).read_bytes() for n in names)).hexdigest()
    assert result.stdout.strip() == here
    train_tiny_tokenizer(tmp_path / "other", vocab_size=1024, seed=1)
    assert (tmp_path / "other" / "merges.txt").read_bytes() != (out / "merges.txt").read_bytes()


def test_tiny_matches_transformers(tiny_dir) -> None:
    transformers = pytest.importorskip("transformers")
    out, special_ids, total = tiny_dir
    tok = EagleTokenizer.from_dir(out)
    hf_fast = transformers.Qwen2TokenizerFast.from_pretrained(str(out))
    hf_auto = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(hf_fast) == len(hf_auto) == total
    assert hf_fast.pad_token_id == special_ids["pad_id"] and hf_fast.eos_token_id == special_ids["im_end_id"]
    assert hf_fast.convert_tokens_to_ids("<IMG_CONTEXT>") == special_ids["image_token_id"]
    prompts = [build_prompt(s, 1 + i % 2) for i, s in enumerate(_fuzz_instructions(150, seed=5) + NON_ASCII)]
    ours = _our_ids(tok, prompts)
    assert ours == _hf_ids(hf_fast, prompts) == _hf_ids(hf_auto, prompts)


def test_tiny_chat_template_renders_like_real(tiny_dir, real_eagle_dir: Path) -> None:
    out, _, _ = tiny_dir
    real = json.loads((real_eagle_dir / "chat_template.json").read_text())["chat_template"]
    tiny = json.loads((out / "chat_template.json").read_text())["chat_template"]
    for n in (0, 1, 2):
        for text in ["pick the apple", np.array(["it's here"])]:
            assert _render_chat_template(tiny, text, n) == _render_chat_template(real, text, n)


def test_tiny_bad_vocab_size(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="vocab_size"):
        train_tiny_tokenizer(tmp_path, vocab_size=10)
