import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Importing the package first loads OpenBLAS before MLX (Linux): model tests run ~40x faster.
import mlx_text2sql  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random llama model folder with a ChatML template (like SmolLM2-Instruct)."""
    from tinymodels import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", "chatml")


@pytest.fixture(scope="session")
def tiny_tinyllama(tmp_path_factory):
    """A tiny llama with TinyLlama-Chat's Zephyr template and </s> as EOS."""
    from tinymodels import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_zephyr"), "llama", "zephyr")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory):
    """A tiny mistral-architecture model with the [INST] template."""
    from tinymodels import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_mistral"), "mistral", "mistral")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny llama base model whose tokenizer has no chat template."""
    from tinymodels import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_base"), "llama", None)


@pytest.fixture
def data_dir(tmp_path):
    """A data folder holding a one-record ``train.jsonl`` (enough for training settings)."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": "x"}\n')
    return d
