import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


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
