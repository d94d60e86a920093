"""A small Qwen2-style byte-level BPE written as an Eagle tokenizer dir (vocab.json, merges.txt, the added tokens of
both Eagle generations in their real order, chat template, processor files), so tiny test checkpoints of either family
carry a tokenizer with the real special-token layout without the real files."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from tokenizers import models, pre_tokenizers, trainers

from gr00t_export.errors import InputError
from gr00t_export.text.qwen2 import (
    IM_END,
    IM_START,
    IMAGE_TOKEN,
    IMG_END,
    IMG_START,
    PAD_TOKEN,
    SYSTEM_PROMPT,
    qwen2_tokenizer,
)

# the files of an Eagle tokenizer/processor dir that a checkpoint's `eagle/` copy carries
EAGLE_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.json", "preprocessor_config.json", "processor_config.json", "generation_config.json")

# The added tokens of Eagle 2.5's tokenizer in id order, from `<|endoftext|>` (151643 in the real one,
# the first id after the BPE vocab) to `</interval>` (151679), with their `special` flag.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<IMG_CONTEXT>", True),
    ("<img>", True),
    ("</img>", True),
    ("<box>", True),
    ("</box>", True),
    ("<quad>", True),
    ("</quad>", True),
    ("<ref>", True),
    ("</ref>", True),
    ("<interval>", True),
    ("</interval>", True),
)
ADDITIONAL_SPECIAL_TOKENS: tuple[str, ...] = tuple(c for c, special in ADDED_TOKENS if special and c != PAD_TOKEN)

TINY_TOKENS_PER_TILE = 256  # Eagle 2.5's, written into the tiny dir's processor_config.json

# Keys of the dict `train_tiny_tokenizer` returns, mapped to token contents.
_SPECIAL_ID_NAMES = {
    "pad_id": PAD_TOKEN,
    "im_start_id": IM_START,
    "im_end_id": IM_END,
    "image_token_id": IMAGE_TOKEN,
    "img_start_id": IMG_START,
    "img_end_id": IMG_END,
}



_VERBS = tuple(
    "pick place put move grab lift drop open close push pull slide stack unstack rotate turn flip "
    "pour wipe insert remove take hand carry bring fold unfold press hang hold release shake sort "
    "pack unpack load unload fetch return swap align tilt scoop squeeze".split(" ")
)
_OBJECTS = tuple(
    "apple|banana|orange|lemon|pear|peach|grape|carrot|potato|sweet potato|tomato|onion|pepper|"
    "cucumber|corn|eggplant|broccoli|mushroom|bread|cheese|egg|milk carton|juice box|soda can|"
    "water bottle|wine glass|cup|mug|bowl|plate|spoon|fork|knife|spatula|pan|pot|kettle|lid|jar|"
    "bottle|can|box|block|cube|cylinder|ball|toy car|book|pen|pencil|marker|scissors|tape|sponge|"
    "towel|napkin|cloth|shirt|sock|shoe|hat|remote|phone|screwdriver|hammer|wrench|bolt|nut|screw|"
    "battery|cable|plug|drawer|door|cabinet|microwave|fridge|oven|faucet|switch|button|handle|tray|"
    "basket|bin|crate|container|bag|package|candle|vase|flower|plant".split("|")
)
_PLACES = tuple(
    "counter|table|shelf|top shelf|bottom shelf|sink|stove|cutting board|tray|basket|bin|drawer|"
    "cabinet|microwave|fridge|oven|plate|bowl|box|crate|floor|chair|desk|bed|couch|rack|dish rack|"
    "dishwasher|cupboard|pantry|conveyor|workbench|toolbox|container|bag|left side|right side|center|"
    "corner|edge|front|back|charging dock|storage area|kitchen|living room|garage".split("|")
)
_ADJECTIVES = tuple(
    "red green blue yellow white black orange purple pink brown gray small large big tiny tall short "
    "empty full open closed left right nearest farthest first second third last wooden metal plastic "
    "glass clean dirty wet dry round square heavy light".split(" ")
)
_PREPOSITIONS = tuple(
    "in|into|on|onto|inside|on top of|next to|behind|in front of|under|near|beside|to|toward|"
    "away from|from|out of|off".split("|")
)
# Endings for instructions; empty strings weight "no ending".
_ADVERBS = tuple(
    "||| carefully| slowly| quickly| gently| firmly| then stop| and return home| with the left hand|"
    " with the right hand| using both hands".split("|")
)
_TEMPLATES = (
    "{v} the {a}{o} {p} the {l}{d}",
    "{v} the {o} from the {l} and {v2} it {p} the {l2}{d}",
    "{V} the {a}{o} {p} the {a2}{l}.",
    "{v} {n} {o}s {p} the {l}{d}",
    "Please {v} the {o} {p} the {l}.",
    "{V} the {o}, then {v2} the {o2}{d}.",
    "Step {n}: {v} the {a}{o} {p} the {l}!",
    "Can you {v} the {o} {p} the {l}?",
    "{v} the {o} ({a}) {p} the {l} - {n} cm away",
    "{V} {n}x {o}: {l} -> {l2}; {d2}",
    "task {n}: {v}_{o} @ {l} [{a}]",
    "{v} the {o} {p} the {l}\n{v2} the {o2} {p} the {l2}",
)


def _tiny_corpus(seed: int, n_sentences: int = 12000) -> list[str]:
    """Combinatorial robot instructions (verbs, objects, places, modifiers), drawn with a seeded RNG."""
    rng = random.Random(seed)
    words = sorted(set(itertools.chain(_VERBS, _OBJECTS, _PLACES, _ADJECTIVES, _PREPOSITIONS)))
    corpus = [" ".join(words), ", ".join(w.capitalize() for w in words)]
    for _ in range(n_sentences):
        verb, verb2 = rng.choice(_VERBS), rng.choice(_VERBS)
        adjective = rng.choice(_ADJECTIVES)
        fields = {
            "v": verb,
            "V": verb.capitalize(),
            "v2": verb2,
            "o": rng.choice(_OBJECTS),
            "o2": rng.choice(_OBJECTS),
            "a": rng.choice(("", adjective + " ")),
            "a2": rng.choice(_ADJECTIVES) + " ",
            "p": rng.choice(_PREPOSITIONS),
            "l": rng.choice(_PLACES),
            "l2": rng.choice(_PLACES),
            "d": rng.choice(_ADVERBS),
            "d2": rng.choice(_ADVERBS).strip() or "done",
            "n": str(rng.randint(0, 120)),
        }
        text = rng.choice(_TEMPLATES).format(**fields)
        if rng.random() < 0.1:
            text = text.upper()
        corpus.append(text)
    return corpus


# Eagle's chat template, written for the tiny dir: same output for string and list (image/video/text)
# message contents, a default system turn and the generation prompt.
_TINY_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + SYSTEM_PROMPT
    + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}<image {{ image_count.value }}>{% endif %}<image-{{ image_count.value }}>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}<video {{ video_count.value }}>{% endif %}<video-{{ video_count.value }}>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _token_spec(content: str, special: bool) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _write_json(path: Path, obj: Any, *, sort_keys: bool = False, indent: int | None = 2) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=sort_keys)
    path.write_text(text + "\n", encoding="utf-8")


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 1024, seed: int = 0) -> tuple[dict[str, int], int]:
    """Train a small Qwen2-style byte-level BPE and write an Eagle-format tokenizer dir to `out_dir`.

    The BPE vocab holds exactly `vocab_size` entries (256 byte symbols + merges); Eagle's 37 added
    tokens follow in the real order, so `<|endoftext|>` = vocab_size and `<IMG_CONTEXT>` = vocab_size
    + 26, the same offsets as 151643/151669. Same seed, same bytes. Returns (special ids, total size);
    the ids dict has pad/im_start/im_end/image_token/img_start/img_end ids and every added token.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise InputError(f"vocab_size must be an int >= 300, got {vocab_size!r}; use e.g. 1024")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = qwen2_tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=alphabet,
        special_tokens=[],
    )
    tok.train_from_iterator(_tiny_corpus(seed), trainer=trainer)
    model_state = json.loads(tok.model.__getstate__())
    vocab: dict[str, int] = model_state["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_state["merges"]]
    if len(vocab) != vocab_size:
        raise InputError(
            f"tiny BPE reached {len(vocab)} tokens, not vocab_size={vocab_size}; the embedded corpus is too "
            "small for that size, use a smaller vocab_size (<= 1024 is safe)"
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered_vocab = dict(sorted(vocab.items(), key=lambda item: item[1]))
    _write_json(out / "vocab.json", ordered_vocab, indent=None)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")

    ids = {content: vocab_size + offset for offset, (content, _) in enumerate(ADDED_TOKENS)}
    total = vocab_size + len(ADDED_TOKENS)
    _write_json(out / "added_tokens.json", ids, sort_keys=True)
    special_token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(
        out / "special_tokens_map.json",
        {
            "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
            "eos_token": {"content": IM_END, **special_token},
            "pad_token": {"content": PAD_TOKEN, **special_token},
        },
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(ids[content]): _token_spec(content, special) for content, special in ADDED_TOKENS
            },
            "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": IM_END,
            "errors": "replace",
            "model_max_length": 16384,
            "pad_token": PAD_TOKEN,
            "padding_side": "left",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    _write_json(out / "chat_template.json", {"chat_template": _TINY_CHAT_TEMPLATE}, indent=4)
    _write_json(
        out / "preprocessor_config.json",
        {
            "crop_size": None,
            "data_format": "channels_first",
            "default_to_square": False,
            "do_center_crop": None,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_pad": False,
            "do_rescale": True,
            "do_resize": False,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Eagle2_5_VLImageProcessorFast",
            "image_std": [0.5, 0.5, 0.5],
            "max_dynamic_tiles": 12,
            "min_dynamic_tiles": 1,
            "pad_during_tiling": False,
            "processor_class": "Eagle2_5_VLProcessor",
            "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "size": {"height": 224, "width": 224},
            "tokens_per_tile": TINY_TOKENS_PER_TILE,
            "use_thumbnail": True,
        },
        indent=4,
    )
    _write_json(
        out / "processor_config.json",
        {
            "image_end_token": IMG_END,
            "image_placeholder": "image",
            "image_start_token": IMG_START,
            "image_token": IMAGE_TOKEN,
            "processor_class": "Eagle2_5_VLProcessor",
            "tokens_per_tile": TINY_TOKENS_PER_TILE,
            "video_placeholder": "video",
            "video_token": IMAGE_TOKEN,
        },
        indent=4,
    )
    special_ids = {name: ids[content] for name, content in _SPECIAL_ID_NAMES.items()}
    special_ids.update(ids)
    return special_ids, total
