"""Tokenizing: a checked record -> token ids with the prompt/answer boundary, the schema
trimmed when the example is over ``max_seq_length`` (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import TrainingError
from .records import (MESSAGES, PROMPT_COMPLETION, completion_messages, prompt_completion, record_form,
                      record_messages, record_text)
from .trim import prompt_schema, trimmed_schemas


@dataclass
class Sample:
    """One tokenized example. ``tokens[prompt_len:]`` is the answer (ending with the EOS)."""

    tokens: np.ndarray  # (T,) int32
    prompt_len: int
    where: str = ""  # file:line
    group: str | None = None  # examples with the same group (schema) may share a prompt prefix


class Encoder:
    """Turns records into :class:`Sample` for one tokenizer and chat template.

    tokenizer: a Hugging Face tokenizer (or mlx_lm's wrapper) with ``apply_chat_template``.
    eos: the string that ends an assistant turn (``LoadedModel.eos``).
    """

    def __init__(self, tokenizer, eos: str, max_seq_length: int = 1024, train_on_prompt: bool = False):
        self.tok = getattr(tokenizer, "_tokenizer", tokenizer)
        self.eos = eos or (self.tok.eos_token or "")
        if not self.eos:
            raise TrainingError("the tokenizer has no EOS token and the chat template no turn end: "
                                "give --chat-template so the model can learn where an answer stops")
        self.max_seq_length = max_seq_length
        self.train_on_prompt = train_on_prompt
        self.eos_ids = self.encode(self.eos)
        bos = self.tok.bos_token
        # As mlx_lm's generate does: let the tokenizer add its specials (BOS) unless the
        # templated text starts with the BOS already.
        self._bos = bos
        self._gen_suffix = self._generation_suffix()

    # -- tokenization
    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """Tokens of a templated prompt, as generation encodes it."""
        add = self._bos is None or not text.startswith(self._bos)
        return list(self.tok.encode(text, add_special_tokens=add))

    def chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def _generation_suffix(self) -> str:
        """What the template puts after a user message when a reply is wanted."""
        mark = "XQZUSERQZX"
        text = self.chat([{"role": "user", "content": mark}], add_generation_prompt=True)
        return text.split(mark, 1)[1] if mark in text else ""

    # -- records
    def encode_record(self, rec: dict, where: str) -> tuple[Sample | None, str]:
        """A Sample (or None when too long even trimmed) and what happened: 'ok', 'trimmed',
        'too_long', 'no_boundary', 'retokenized'."""
        form = record_form(rec, where)
        if form == MESSAGES:
            return self._from_messages(record_messages(rec, where), rec, where)
        if form == PROMPT_COMPLETION:
            prompt, completion = prompt_completion(rec, where)
            if self._gen_suffix.strip() and prompt.rstrip().endswith(self._gen_suffix.strip()):
                return self._from_texts(prompt, completion, where)
            return self._from_messages(completion_messages(rec, prompt, completion), rec, where)
        text, pos = record_text(rec, where)
        if pos <= 0:
            return self._whole_text(text, where)
        return self._from_texts(text[:pos], text[pos:], where)

    def _from_messages(self, msgs: list[dict], rec: dict, where: str) -> tuple[Sample | None, str]:
        sample, status = self._encode_messages(msgs, where)
        if sample is not None and len(sample.tokens) <= self.max_seq_length:
            return sample, status
        # Too long: shorter schemas, in order of how much they keep.
        user_i = max(i for i, m in enumerate(msgs) if m["role"] != "assistant")
        content = msgs[user_i]["content"]
        schema = prompt_schema(content, rec)
        if not schema:
            return None, "too_long"
        sql = msgs[-1]["content"]
        for smaller in trimmed_schemas(schema, sql):
            trial = [dict(m) for m in msgs]
            trial[user_i]["content"] = content.replace(schema, smaller, 1)
            sample, status = self._encode_messages(trial, where)
            if len(sample.tokens) <= self.max_seq_length:
                return sample, "trimmed"
        return None, "too_long"

    def _encode_messages(self, msgs: list[dict], where: str) -> tuple[Sample, str]:
        prompt = self.chat(msgs[:-1], add_generation_prompt=True)
        full = self.chat(msgs)
        if full.startswith(prompt):
            return self._from_texts(prompt, full[len(prompt):], where)
        # A template that renders the generation prompt differently from a finished turn:
        # train on what generation sees, the prompt followed by the answer and the EOS.
        return self._from_texts(prompt, msgs[-1]["content"], where)

    def _from_texts(self, prompt: str, answer: str, where: str) -> tuple[Sample, str]:
        """Join a templated prompt and its answer text (cut right after the turn's EOS, or the
        EOS appended when the answer has none)."""
        cut = answer.find(self.eos)
        answer = answer[: cut + len(self.eos)] if cut >= 0 else answer.rstrip() + self.eos
        prompt_ids = self.encode_prompt(prompt)
        full_ids = self.encode_prompt(prompt + answer)
        status = "ok"
        if full_ids[: len(prompt_ids)] != prompt_ids:
            full_ids = prompt_ids + self.encode(answer)
            status = "retokenized"
        if full_ids[-len(self.eos_ids):] != self.eos_ids:
            full_ids = full_ids + self.eos_ids
        return Sample(np.asarray(full_ids, dtype=np.int32), len(prompt_ids), where), status

    def _whole_text(self, text: str, where: str) -> tuple[Sample | None, str]:
        ids = self.encode_prompt(text)
        if ids[-len(self.eos_ids):] != self.eos_ids:
            ids = ids + self.eos_ids
        if len(ids) > self.max_seq_length:
            return None, "too_long"
        # No answer boundary: every token after the first is a target.
        return Sample(np.asarray(ids, dtype=np.int32), 1, where), "no_boundary"
