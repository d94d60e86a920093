"""TorchScript tokenizer stage: golden ids, >= 1,000 ASCII instructions against EagleTokenizer and transformers,
left padding, 2 views, the tiny tokenizer, the non-ASCII refusal and a Python-free reload."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Regex, pre_tokenizers

from gr00t_export.errors import InputError, ValidationFailure
from gr00t_export.families.n1_5.preprocess import tokenizer_script
from gr00t_export.families.n1_5.preprocess.tokenizer import QWEN2_SPLIT_PATTERN, EagleTokenizer, build_prompt
from gr00t_export.families.n1_5.preprocess.tokenizer_script import (
    ScriptableEagleTokenizer,
    check_against_python,
    export_tokenizer,
)
from gr00t_export.text.tiny import train_tiny_tokenizer

GOLDEN_KEY = "obs.annotation.human.action.task_description"


@pytest.fixture(scope="module")
def artifact_path(eagle: EagleTokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "preprocess" / "eagle2_tokenizer.pt"
    assert export_tokenizer(eagle, 1, out) == out
    return out


@pytest.fixture(scope="module")
def artifact(artifact_path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(artifact_path))


@pytest.fixture(scope="module")
def eager_module(eagle: EagleTokenizer) -> ScriptableEagleTokenizer:
    return ScriptableEagleTokenizer(eagle, 1)


@pytest.fixture(scope="module")
def artifact_2views(eagle: EagleTokenizer, tmp_path_factory) -> torch.jit.ScriptModule:
    out = tmp_path_factory.mktemp("export2") / "eagle2_tokenizer.pt"
    return torch.jit.load(str(export_tokenizer(eagle, 2, out)))


def robot_instructions() -> list[str]:
    """Verbs x objects x places, each with a case style, a tail and sometimes a contraction."""
    verbs = ["pick", "place", "put", "move", "grab", "open", "close", "push", "pour", "stack"]
    objects = ["apple", "sweet potato", "red cup", "bottle", "cube #3", "can's lid", "drawer", "2 bananas"]
    places = ["counter", "plate", "basket", "top shelf", "sink", "bin 12"]
    tails = ["", ".", "!", "?", " now.", "...", ", then stop", "; it's done", " - we'll see", "  ", "\n", " (left)"]
    out = []
    for k, (verb, obj, place) in enumerate(itertools.product(verbs, objects, places)):
        text = f"{verb} the {obj} from the table and place it in the {place}{tails[k % len(tails)]}"
        if k % 5 == 1:
            text = text.capitalize()
        elif k % 5 == 2:
            text = text.upper()
        elif k % 7 == 3:
            text = "Don't drop it: " + text
        elif k % 11 == 4:
            text = 'say "' + text + '"'
        out.append(text)
    return out


def fuzz_instructions(n: int, seed: int) -> list[str]:
    """Seeded random ASCII built from pieces that stress the split rule and the repr wrapping."""
    rng = random.Random(seed)
    printable = [chr(c) for c in range(32, 127)]
    every_ascii = [chr(c) for c in range(128)]
    specials = ["'", '"', "\\", "'s", "'T", "'re", "'VE", "'m", "'Ll", "'d", "it's", "we'll", "I'M", "''", "\\'"]
    spaces = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\t \t", "\x0b", "\x0c", "\r"]
    added = ["<img>", "</img>", "<|im_end|>", "<IMG_CONTEXT>", "<|im", "<img", "</img>>", "<<|endoftext|>", "<think>"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 14)):
            kind = rng.random()
            if kind < 0.35:
                parts.append("".join(rng.choice(printable) for _ in range(rng.randint(1, 8))))
            elif kind < 0.55:
                parts.append(rng.choice(spaces) * rng.randint(1, 3))
            elif kind < 0.65:
                parts.append(str(rng.randint(0, 10**9)))
            elif kind < 0.85:
                parts.append(rng.choice(specials))
            elif kind < 0.95:
                parts.append(rng.choice(["the", "Pick", "CUP", "x", "ab", "place"]))
            elif kind < 0.98:
                parts.append(rng.choice(every_ascii))
            else:
                parts.append(rng.choice(added))
        out.append("".join(parts))
    return out


def _unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)]


# --- real files --------------------------------------------------------------------------------------


def test_golden_ids_exact(artifact, golden_vectors) -> None:
    instruction = str(golden_vectors[GOLDEN_KEY][0])
    ids, mask = artifact([instruction])
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), golden_vectors["transformed.eagle_input_ids"])
    np.testing.assert_array_equal(mask.numpy(), golden_vectors["transformed.eagle_attention_mask"])
    assert ids.shape == (1, 297)
    assert (artifact.num_images, artifact.tokens_per_image, artifact.pad_id) == (1, 256, 151643)
    assert int((ids == artifact.image_token_id).sum()) == 256


def test_ascii_1000_plus_equal_python_and_transformers(artifact, eagle: EagleTokenizer, hf_real) -> None:
    instructions = robot_instructions() + fuzz_instructions(700, seed=11)
    assert len(instructions) >= 1000
    ids, mask = artifact(instructions)
    want_ids, want_mask = eagle.encode(instructions, 1)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    oracle = hf_real([build_prompt(s, 1) for s in instructions], add_special_tokens=False)["input_ids"]
    ours = _unpadded(ids, mask)
    bad = [s for s, a, b in zip(instructions, ours, oracle, strict=True) if a != b]
    assert not bad, f"{len(bad)} of {len(instructions)} differ from transformers, first: {bad[0]!r}"


def test_split_equals_qwen2_regex_on_all_ascii(artifact) -> None:
    """The hand-written split against the regex itself, on raw text with every ASCII code (no repr)."""
    splitter = pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False)
    texts = fuzz_instructions(400, seed=3) + [
        "",
        " ",
        "  x",
        "a  \n  b",
        "\t\tx",
        "x \x0b\x0c y",
        "\x1c\x1d\x1e\x1f \x1fz",
        "end   ",
        "!!\r\n\r\nx",
        " !x",
        " 1",
        "'S'Re'vE'lL'd'x 'q",
        "''s",
        "9'",
        "\n \n \t",
    ]
    for text in texts:
        want = [piece for piece, _ in splitter.pre_tokenize_str(text)]
        assert artifact.split(text) == want, repr(text)


def test_raw_text_mode_equals_python(eagle: EagleTokenizer, hf_real, tmp_path: Path) -> None:
    """Without the `['...']` wrapping, control characters and CR/LF reach the split rule unescaped."""
    module = torch.jit.load(str(export_tokenizer(eagle, 1, tmp_path / "raw.pt", wrap_as_array=False)))
    instructions = fuzz_instructions(150, seed=5) + ["  lead", "trail \n", "\x00\x7f", "a\x1fb"]
    ids, mask = module(instructions)
    want_ids, want_mask = eagle.encode(instructions, 1, wrap_as_array=False)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    oracle = hf_real([build_prompt(s, 1, wrap_as_array=False) for s in instructions], add_special_tokens=False)
    assert _unpadded(ids, mask) == oracle["input_ids"]


def test_repr_wrap_equals_numpy_str(artifact) -> None:
    samples = fuzz_instructions(200, seed=9) + ["it's", 'say "hi"', "both ' and \"", "", "\\", "\x00\x1f\x7f\t"]
    for text in samples:
        assert artifact.repr_wrap(text) == str(np.array([text])), repr(text)


def test_batch_left_padding(artifact, eagle: EagleTokenizer) -> None:
    texts = ["pick the apple", "pick the sweet potato from the counter and place it in the plate", "go", ""]
    ids, mask = artifact(texts)
    singles = [artifact([t]) for t in texts]
    assert ids.shape == (4, max(s[0].shape[1] for s in singles))
    for row, (single_ids, single_mask) in enumerate(singles):
        n = single_ids.shape[1]
        assert int(mask[row].sum()) == n
        assert torch.equal(ids[row, -n:], single_ids[0]) and torch.equal(mask[row, -n:], single_mask[0])
        assert (ids[row, :-n] == eagle.pad_id).all() and (mask[row, :-n] == 0).all()
    assert mask[1].all()
    want_ids, want_mask = eagle.encode(texts, 1)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(mask.numpy(), want_mask)


def test_two_views(artifact_2views, eagle: EagleTokenizer, hf_real) -> None:
    assert artifact_2views.num_images == 2
    robot = robot_instructions()[::7]
    instructions = robot + fuzz_instructions(80, seed=21)
    ids, mask = artifact_2views(instructions)
    want_ids, want_mask = eagle.encode(instructions, 2)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    image_counts = (ids == eagle.image_token_id).sum(1).tolist()  # fuzz text may spell out <IMG_CONTEXT>
    assert image_counts[: len(robot)] == [2 * 256] * len(robot) and min(image_counts) >= 2 * 256
    oracle = hf_real([build_prompt(s, 2) for s in instructions], add_special_tokens=False)["input_ids"]
    assert _unpadded(ids, mask) == oracle


def test_zero_views_tokenizes_user_turn_with_instruction(eagle: EagleTokenizer) -> None:
    """With no image block, plain text `user\\n` sits next to the instruction and is BPE'd with it."""
    module = torch.jit.script(ScriptableEagleTokenizer(eagle, 0))
    assert module.prefix_text == "user\n"
    check_against_python(module, eagle, fuzz_instructions(60, seed=4))
    raw = torch.jit.script(ScriptableEagleTokenizer(eagle, 0, wrap_as_array=False))
    check_against_python(raw, eagle, ["\n\nx", "  y", "z", "", "\t!", "<img>a"])


def test_non_ascii_refused_with_clear_error(artifact, eager_module: ScriptableEagleTokenizer) -> None:
    cases = [("h\u00e9llo", "U\\+00E9 at character 1"), ("ab\u6f22", "U\\+6F22 at character 2")]
    cases += [("x\U0001f34e", "U\\+1F34E at character 1"), ("\u00a0nbsp", "U\\+00A0 at character 0")]
    for text, where in cases:
        with pytest.raises(
            torch.jit.Error, match=f"instruction 1 has the non-ASCII character {where}; .*ASCII text only"
        ):
            artifact(["fine", text])
    with pytest.raises(torch.jit.Error, match="non-empty list"):
        artifact([])
    with pytest.raises(ValueError, match="U\\+00E9 at character 1"):  # the eager module says the same
        eager_module(["h\u00e9llo"])


def test_loads_without_python_in_fresh_process(artifact_path: Path, eagle: EagleTokenizer, tmp_path: Path) -> None:
    texts = ["pick the apple", "it's 2 o'clock\n\tdon't \"stop\""]
    code = (
        "import json, sys\n"
        "sys.modules['gr00t_export'] = None  # any import of the package now fails\n"
        "import torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "graphs = [str(getattr(m, n).inlined_graph) for n in ('forward', 'encode_one', 'split')]\n"
        "assert not any('PythonOp' in g for g in graphs)\n"
        "ids, mask = m(json.loads(sys.argv[2]))\n"
        "assert not any(k.startswith('gr00t_export.') for k in sys.modules)\n"
        "print(json.dumps([ids.tolist(), mask.tolist(), m.num_images, m.tokens_per_image]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(artifact_path), json.dumps(texts)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ids, mask, num_images, tokens_per_image = json.loads(result.stdout)
    want_ids, want_mask = eagle.encode(texts, 1)
    assert ids == want_ids.tolist() and mask == want_mask.tolist()
    assert (num_images, tokens_per_image) == (1, 256)


# --- export checks and errors --------------------------------------------------------------------------


def test_self_check_catches_a_wrong_module(eager_module: ScriptableEagleTokenizer, eagle: EagleTokenizer) -> None:
    check_against_python(eager_module, eagle, ["pick it"])  # the eager module agrees too
    suffix_ids = eager_module.suffix_ids
    eager_module.suffix_ids = suffix_ids[:-1]
    try:
        with pytest.raises(ValidationFailure, match="differs from EagleTokenizer"):
            check_against_python(eager_module, eagle)
    finally:
        eager_module.suffix_ids = suffix_ids


def test_failed_self_check_leaves_no_file(eagle: EagleTokenizer, tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs) -> None:
        raise ValidationFailure("forced")

    monkeypatch.setattr(tokenizer_script, "check_against_python", fail)
    target = tmp_path / "eagle2_tokenizer.pt"
    with pytest.raises(ValidationFailure, match="forced"):
        export_tokenizer(eagle, 1, target)
    assert list(tmp_path.iterdir()) == []


def test_build_self_checks_the_tokenizer_it_wrote(tmp_path: Path, monkeypatch) -> None:
    """A tokenizer stage that agrees with its own eager module (so the export check passes) but not with
    EagleTokenizer: the build's self-check of the written file stops it, and nothing is written."""
    from gr00t_export.families.n1_5 import partition as partition_module
    from gr00t_export.families.n1_5.synthetic import make_checkpoint
    from gr00t_export.pipeline.build import BuildOptions, build

    class DropsTheLastSuffixId(ScriptableEagleTokenizer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.suffix_ids = self.suffix_ids[:-1]

    ckpt = make_checkpoint(tmp_path / "ckpt", "tiny", 0, show_progress=False)
    monkeypatch.setattr(partition_module, "ScriptableEagleTokenizer", DropsTheLastSuffixId)
    out, steps = tmp_path / "out", []
    with pytest.raises(ValidationFailure, match=r"preprocess/eagle2_tokenizer.pt failed its self-check: TorchScript "
                                                r"tokenizer differs from EagleTokenizer .*; nothing was written"):
        build(BuildOptions(model_path=ckpt, output=out, simplify=False), on_step=steps.append)
    assert "export eagle2_tokenizer" in steps and steps[-1] == "self-check the artifacts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no output, no temp dir


def test_added_tokens_across_the_seams_are_refused() -> None:
    before, after = "<|im_start|>user\n<img>x</img>", "<|im_end|>\n<|im_start|>assistant\n"
    tokenizer_script._check_seams(["<img>", "</img>", "<|im_end|>", "<|im_start|>"], before, after)
    for risky in ("</img>!", "mg></x>", "?<|im", "a<|im_end|>", "!<|im_end|>\n<|im_start|>assistant\n"):
        with pytest.raises(InputError, match="overlaps the prompt around the instruction"):
            tokenizer_script._check_seams(["<img>", risky], before, after)


def test_bad_arguments(eagle: EagleTokenizer, tmp_path: Path) -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(InputError, match="num_images"):
            ScriptableEagleTokenizer(eagle, bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="does not exist"):
        export_tokenizer(tmp_path / "nope", 1, tmp_path / "t.pt")


# --- tiny tokenizer ----------------------------------------------------------------------------------------


def test_tiny_tokenizer_dir(tmp_path: Path) -> None:
    special_ids, _ = train_tiny_tokenizer(tmp_path / "tok", vocab_size=1024, seed=0)
    tok = EagleTokenizer.from_dir(tmp_path / "tok")
    for views in (1, 2):
        module = torch.jit.load(str(export_tokenizer(tmp_path / "tok", views, tmp_path / f"tiny{views}.pt")))
        assert module.pad_id == special_ids["pad_id"] and module.image_token_id == special_ids["image_token_id"]
        instructions = robot_instructions()[::5] + fuzz_instructions(150, seed=views)
        ids, mask = module(instructions)
        want_ids, want_mask = tok.encode(instructions, views)
        np.testing.assert_array_equal(ids.numpy(), want_ids)
        np.testing.assert_array_equal(mask.numpy(), want_mask)
