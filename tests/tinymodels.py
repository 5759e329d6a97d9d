"""Tiny random models for tests: real architectures (llama, mistral), a real BPE tokenizer
trained here on a small SQL corpus, and the real chat templates, written as Hugging Face style
folders that ``mlx_lm.load`` and our loader read. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "SELECT name FROM singer WHERE age > 30",
    'SELECT COUNT(*) FROM "table_1" WHERE "Player" = \'Art Long\'',
    "SELECT MAX(points), MIN(points), AVG(points), SUM(points) FROM team GROUP BY city ORDER BY 1 DESC LIMIT 3",
    "CREATE TABLE head (age INTEGER, name TEXT, born_state VARCHAR, id INT PRIMARY KEY)",
    "Schema: Question: What is the name of the player who plays guard? How many schools?",
    "You translate questions into SQLite queries. Answer with one SQL query over the given schema and nothing else.",
    "example rows from the table | Butler CC (KS) | 1996-97 | United States | Guard-Forward",
    "<|system|> <|user|> <|assistant|> [INST] [/INST] <<SYS>> <</SYS>> system user assistant",
    "the of and to in is what which who when where how many list show find give total average",
    "0123456789 . , ; : ( ) ' \" * = < > ! _ - / \\ % & + ? \n",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ é ü ß 中文",
]


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer (transformers' fast wrapper) with SMOLLM-like specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
    )


def make_tiny_model(path, arch: str = "llama", template: str | None = "chatml", *,
                    hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 128, seed: int = 0, tie: bool = False,
                    eos: str | None = None) -> Path:
    """Write a tiny random ``arch`` model folder at ``path`` and return it.

    template: a name from ``prompts.CHAT_TEMPLATES`` stored as the tokenizer's chat template,
    or None for a base model without one. eos: the tokenizer's eos token (default: the
    template's EOS, so a ChatML model ends turns with <|im_end|> as SmolLM2-Instruct does).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from mlx_text2sql.prompts import get_template

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    tpl = get_template(template) if template else None
    if eos is None:
        eos = tpl.eos if tpl else "</s>"
    tok.eos_token = eos
    if tpl:
        tok.chat_template = tpl.jinja
    tok.save_pretrained(path)

    config = {
        "model_type": arch,
        "architectures": ["MistralForCausalLM" if arch == "mistral" else "LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tok),
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": tie,
        "bos_token_id": tok.convert_tokens_to_ids("<s>"),
        "eos_token_id": tok.convert_tokens_to_ids(eos),
        "torch_dtype": "float32",
    }
    mx.random.seed(seed)
    args = llama.ModelArgs.from_dict({**config, "model_type": "llama"})
    model = llama.Model(args)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def make_programmed_model(path, reply: str, template: str = "chatml", arch: str = "llama",
                          end: str | None = "eos") -> Path:
    """A tiny model whose greedy reply to any prompt (ending like the template's generation
    prompt) is ``reply``, followed by the template's EOS token (``end="eos"``), or by nothing
    in particular (``end=None``: the last reply token loops to itself).

    How: attention and MLP outputs are zeroed, so the final hidden state is the (normalised)
    embedding of the current token: a bigram machine. Each token of the chain (the prompt's
    last token, then the reply's tokens) gets a one-hot embedding e_k, and the output row of
    its successor is 10 * e_k, which beats every random logit by far.
    """
    import mlx.core as mx
    import numpy as np

    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.models import load_model
    from mlx_text2sql.prompts import build_messages, get_template

    path = make_tiny_model(path, arch, template)
    lm = load_model(str(path))
    gen = SQLGenerator(lm)
    last = gen.prompt_tokens(build_messages("q", "CREATE TABLE t (a INT)"))[-1]
    reply_ids = lm.tokenizer.encode(reply, add_special_tokens=False)
    chain = [last] + list(reply_ids)
    if end == "eos":
        eos = get_template(template).eos
        chain.append(lm.tokenizer.convert_tokens_to_ids(eos))
    assert len(set(chain)) == len(chain), f"tokens repeat in {chain}: pick another reply"
    weights = dict(mx.load(str(path / "model.safetensors")))
    hidden = weights["model.embed_tokens.weight"].shape[1]
    assert len(chain) <= hidden
    embed = np.array(weights["model.embed_tokens.weight"])
    head = np.array(weights["lm_head.weight"])
    for k, tok in enumerate(chain):
        embed[tok] = 0.0
        embed[tok, k] = 1.0
        nxt = chain[k + 1] if k + 1 < len(chain) else (tok if end is None else None)
        if nxt is not None:
            head[nxt] = 0.0
            head[nxt, k] = 10.0
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(head)
    for name in list(weights):
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
