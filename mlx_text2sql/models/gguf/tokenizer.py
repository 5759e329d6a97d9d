"""The tokenizer of a GGUF file, rebuilt from its metadata with the ``tokenizers`` library:
byte-level BPE (``gpt2``: SmolLM2, Llama 3) or SentencePiece-style BPE with byte fallback
(``llama``: TinyLlama, Mistral, Llama 2)."""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelError
from .layout import CONTROL, NORMAL, USER_DEFINED, log

# tokenizer.ggml.pre values whose pre-tokenizer splits digits one by one before the GPT-2 regex
# (StarCoder-style vocabularies such as SmolLM2's).
_DIGIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def gguf_tokenizer(meta: dict, path: str | Path = ""):
    """mlx_lm ``TokenizerWrapper`` around a ``PreTrainedTokenizerFast`` rebuilt from metadata."""
    from mlx_lm.tokenizer_utils import (BPEStreamingDetokenizer, SPMStreamingDetokenizer,
                                        TokenizerWrapper)

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens); cannot use it")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, types, meta)
        detok = BPEStreamingDetokenizer
    elif kind == "llama":
        backend = _sentencepiece_bpe(tokens, types, meta)
        detok = SPMStreamingDetokenizer
    else:
        raise ModelError(f"{path}: tokenizer type {kind!r} is not supported (gpt2 and llama are)")

    def tok_str(key):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

    bos, eos = tok_str("bos"), tok_str("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _post_processor(backend, bos if add_bos else None, eos if add_eos else None)

    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=tok_str("unknown"),
        pad_token=tok_str("padding"), clean_up_tokenization_spaces=False,
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        hf.chat_template = template
    eos_ids = [int(meta["tokenizer.ggml.eos_token_id"])] if "tokenizer.ggml.eos_token_id" in meta else []
    if "tokenizer.ggml.eot_token_id" in meta:
        eos_ids.append(int(meta["tokenizer.ggml.eot_token_id"]))
    return TokenizerWrapper(hf, detok, eos_token_ids=eos_ids)


def _added_tokens(tokens, types):
    from tokenizers import AddedToken

    return [AddedToken(t, special=ty == CONTROL, normalized=False)
            for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED) and t]


def _byte_level_bpe(tokens, types, meta):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    pre = (meta.get("tokenizer.ggml.pre") or "default").lower()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     byte_level])
    elif pre in ("llama-bpe", "llama3", "llama-v3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        if pre not in ("default", "gpt-2", "gpt2"):
            log(f"[mlx-text2sql] GGUF pre-tokenizer {pre!r} is not known here; using GPT-2's "
                "splitting rules (token ids may differ from llama.cpp on some inputs)")
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_added_tokens(tokens, types))
    return tok


def _sentencepiece_bpe(tokens, types, meta):
    """SentencePiece BPE (llama/Mistral vocabularies) as a tokenizers BPE with byte fallback.

    GGUF keeps SentencePiece's piece scores instead of merges; SentencePiece BPE always joins the
    adjacent pair whose union has the highest score, so ranking every (left, right) split of a
    piece by that piece's score gives an equivalent merge list."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if not merges:
        mergeable = {t for t, ty in zip(tokens, types) if ty in (NORMAL, USER_DEFINED)}
        ranked = []
        for piece in mergeable:
            for i in range(1, len(piece)):
                left, right = piece[:i], piece[i:]
                if left in mergeable and right in mergeable:
                    ranked.append((-scores[vocab[piece]], vocab[piece], vocab[left], vocab[right],
                                   left, right))
        merges = [(r[4], r[5]) for r in sorted(ranked)]
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norms = [normalizers.Prepend("▁")] if space_prefix else []
    tok.normalizer = normalizers.Sequence(norms + [normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens(_added_tokens(tokens, types))
    return tok


def _post_processor(tok, bos: str | None, eos: str | None) -> None:
    from tokenizers import processors

    if not bos and not eos:
        return
    single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else []))
    pair = single + " " + " ".join(([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else []))
    special = [(t, tok.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
