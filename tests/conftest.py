"""Shared fixtures: the real NVIDIA data lives in ../shared/data beside the checkout, never in the repo."""

import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A suite started as a background job (`.ci/run &` in a script) inherits SIGINT ignored, and so would every CLI the
# tests interrupt: Python then never raises KeyboardInterrupt there. A handler here (not ignored) resets to the
# default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def pick_n_place() -> Path:
    return _shared("robot_sim.PickNPlace")


@pytest.fixture(scope="session")
def real_eagle_dir() -> Path:
    return _shared("eagle2_hg_model")


@pytest.fixture(scope="session")
def golden_vectors():
    import numpy as np

    return dict(np.load(_shared("test_vectors") / "gr1_pickplace_ep1_step5_transforms.npz", allow_pickle=False))


@pytest.fixture(scope="session")
def eagle(real_eagle_dir: Path):
    """The real Eagle 2.5 tokenizer, loaded once for every test module."""
    from gr00t_export.families.n1_5.preprocess.tokenizer import EagleTokenizer

    return EagleTokenizer.from_dir(real_eagle_dir)


@pytest.fixture(scope="session")
def hf_real(real_eagle_dir: Path):
    """transformers' Qwen2 tokenizer from the same real files: the test-only oracle."""
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2TokenizerFast.from_pretrained(str(real_eagle_dir))
