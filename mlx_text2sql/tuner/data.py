"""Training data: JSONL records -> token sequences with an answer boundary -> padded batches.

Three record forms are read (those ``convert`` writes, plus mlx_lm's):

- ``{"messages": [system, user, assistant], ...}`` (or ``question`` + ``schema`` + ``sql``):
  the model's chat template is applied;
- ``{"prompt": ..., "completion": ...}``: a prompt already in the template is used as is,
  otherwise it becomes the user turn;
- ``{"text": ...}``: fully templated text; when the record also has ``sql`` the answer starts
  where that SQL does, otherwise every token is trained on.

The loss falls on the answer only (the SQL and the turn end) unless ``train_on_prompt``. The
prompt/answer boundary is found by tokenizing the templated prompt (with the generation prompt)
and the full conversation and checking that one is a prefix of the other; when a merge across
the boundary breaks that, the sequence is rebuilt as prompt tokens + answer tokens, which is
what the model sees at generation time. The answer always ends with the EOS the model must learn
(``LoadedModel.eos``), and nothing after it. Examples longer than ``max_seq_length`` get their
schema trimmed (sample rows first, then tables the SQL does not use); the SQL is never cut:
an example that still does not fit is skipped and counted.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, TrainingError
from ..jsonl import iter_jsonl
from ..prompts import SYSTEM_PROMPT, user_message
from ..sql.ddl import create_table_name
from ..sql.lexer import block_comments, identifiers, mask


@dataclass
class Sample:
    """One tokenized example. ``tokens[prompt_len:]`` is the answer (ending with the EOS)."""

    tokens: np.ndarray  # (T,) int32
    prompt_len: int
    where: str = ""  # file:line
    group: str | None = None  # examples with the same group (schema) may share a prompt prefix


@dataclass
class DataStats:
    records: int = 0
    used: int = 0
    trimmed: int = 0            # schema shortened to fit max_seq_length
    too_long: list[str] = field(default_factory=list)  # file:line of skipped examples
    no_boundary: int = 0        # text records without a findable answer: trained on every token
    retokenized: int = 0        # boundary merge: rebuilt as prompt tokens + answer tokens
    tokens: int = 0
    answer_tokens: int = 0

    def describe(self, name: str) -> str:
        parts = [f"{name}: {self.used} examples, {self.tokens:,} tokens ({self.answer_tokens:,} trained on)"]
        if self.trimmed:
            parts.append(f"{self.trimmed} with a trimmed schema")
        if self.too_long:
            parts.append(f"{len(self.too_long)} skipped as too long even with a trimmed schema "
                         f"(first: {self.too_long[0]})")
        if self.no_boundary:
            parts.append(f"{self.no_boundary} text records without 'sql' trained on every token")
        return "; ".join(parts)


@dataclass
class TokenizedSet:
    samples: list[Sample]
    stats: DataStats
    path: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.tokens) for s in self.samples], dtype=np.int64)


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
        if "messages" in rec or ("question" in rec and "schema" in rec and "text" not in rec
                                 and "prompt" not in rec):
            return self._from_messages(self._messages(rec, where), rec, where)
        if "prompt" in rec and "completion" in rec:
            prompt, completion = rec["prompt"], rec["completion"]
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise InputError("'prompt' and 'completion' must be strings, the completion non-empty",
                                 *_split_where(where))
            if self._gen_suffix.strip() and prompt.rstrip().endswith(self._gen_suffix.strip()):
                return self._from_texts(prompt, completion, where)
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            # A prompt convert built from question + schema gets the system prompt generation uses.
            if isinstance(rec.get("question"), str) and isinstance(rec.get("schema"), str) \
                    and prompt == user_message(rec["question"], rec["schema"]):
                msgs.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
            return self._from_messages(msgs, rec, where)
        if "text" in rec:
            text = rec["text"]
            if not isinstance(text, str) or not text.strip():
                raise InputError("'text' must be a non-empty string", *_split_where(where))
            sql = rec.get("sql")
            pos = text.rfind(sql.strip()) if isinstance(sql, str) and sql.strip() else -1
            if pos <= 0:
                return self._whole_text(text, where)
            return self._from_texts(text[:pos], text[pos:], where)
        raise InputError("record has none of 'messages', 'question'+'schema', 'prompt'+'completion', 'text'",
                         *_split_where(where))

    def _messages(self, rec: dict, where: str) -> list[dict]:
        if "messages" in rec:
            msgs = rec["messages"]
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs):
                raise InputError("'messages' must be a list of {role, content} strings", *_split_where(where))
            if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
                raise InputError("the last message must be a non-empty assistant turn (the SQL to learn)",
                                 *_split_where(where))
            if len(msgs) < 2:
                raise InputError("'messages' needs a prompt turn before the assistant turn", *_split_where(where))
            return [dict(m) for m in msgs]
        q, schema, sql = rec.get("question"), rec.get("schema"), rec.get("sql")
        if not all(isinstance(x, str) for x in (q, schema, sql)) or not sql.strip():
            raise InputError("a question+schema record needs string 'question', 'schema' and non-empty 'sql'",
                             *_split_where(where))
        from ..prompts import build_messages

        return build_messages(q, schema, sql)

    def _from_messages(self, msgs: list[dict], rec: dict, where: str) -> tuple[Sample | None, str]:
        sample, status = self._encode_messages(msgs, where)
        if sample is not None and len(sample.tokens) <= self.max_seq_length:
            return sample, status
        # Too long: shorter schemas, in order of how much they keep.
        user_i = max(i for i, m in enumerate(msgs) if m["role"] != "assistant")
        content = msgs[user_i]["content"]
        schema = rec.get("schema") if isinstance(rec.get("schema"), str) and rec["schema"] in content else None
        if schema is None:
            m = re.search(r"Schema:\n(.*?)\n\nQuestion:", content, re.S)
            schema = m.group(1) if m else None
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


def _split_where(where: str) -> tuple[str | None, int | None]:
    path, _, line = where.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return where or None, None


# --------------------------------------------------------------------------- schema trimming

# A CREATE TABLE that starts a line or follows a ';', searched in code only (lexer.mask).
_CREATE = re.compile(r"(?im)(?:^|(?<=;))\s*CREATE\s+TABLE\b")


def split_tables(schema: str) -> list[str]:
    """The schema's CREATE TABLE statements (each with its sample-row comment)."""
    starts = [m.start() for m in _CREATE.finditer(mask(schema))]
    if not starts:
        return [schema]
    starts[0] = 0
    return [schema[a:b].strip() for a, b in zip(starts, starts[1:] + [len(schema)]) if schema[a:b].strip()]


def table_name(statement: str) -> str | None:
    """The name the statement's CREATE TABLE defines, unquoted (None when it has none)."""
    return create_table_name(statement)


def _without_block_comments(text: str) -> str:
    """``text`` without its ``/* ... */`` comments (the sample rows), each with the line break
    before it; comments inside strings, quoted names or ``--`` comments are not comments."""
    parts, last = [], 0
    for start, end in block_comments(text):
        cut = start - 1 if start > last and text[start - 1] == "\n" else start
        parts.append(text[last:cut])
        last = end
    parts.append(text[last:])
    return "".join(parts)


def trimmed_schemas(schema: str, sql: str) -> list[str]:
    """Shorter versions of ``schema``, most complete first: without sample rows; only the
    tables the SQL names (a bare or quoted name, any case; not a word in a string) with rows,
    then without. Each is kept only if it is shorter."""
    no_rows = _without_block_comments(schema).strip()
    tables = split_tables(schema)
    names = {name.lower() for name in identifiers(sql)}
    used = [t for t in tables if (n := table_name(t)) is None or n.lower() in names]
    out = []
    for cand in (no_rows, "\n\n".join(used), _without_block_comments("\n\n".join(used)).strip()):
        if cand and len(cand) < len(schema) and cand not in out:
            out.append(cand)
    return out


# --------------------------------------------------------------------------- loading

def load_split(path: str | Path, encoder: Encoder) -> TokenizedSet:
    """Tokenize every record of a JSONL file; malformed lines raise InputError (file:line)."""
    path = Path(path)
    stats = DataStats()
    samples = []
    for lineno, rec in iter_jsonl(path):
        stats.records += 1
        where = f"{path}:{lineno}"
        sample, status = encoder.encode_record(rec, where)
        if sample is None:
            stats.too_long.append(where)
            continue
        schema = rec.get("schema")
        if isinstance(schema, str) and schema:
            sample.group = schema
        if status == "trimmed":
            stats.trimmed += 1
        elif status == "no_boundary":
            stats.no_boundary += 1
        elif status == "retokenized":
            stats.retokenized += 1
        samples.append(sample)
        stats.tokens += len(sample.tokens)
        start = 1 if encoder.train_on_prompt else sample.prompt_len
        stats.answer_tokens += len(sample.tokens) - start
    stats.used = len(samples)
    return TokenizedSet(samples, stats, str(path))


# --------------------------------------------------------------------------- batching

@dataclass
class Batch:
    """A padded batch, with the answer positions gathered for the loss.

    inputs:  (B, L) int32 token ids (the sequences without their last token), zero-padded;
             L is rounded up to a multiple of ``pad_to`` so few shapes need compiling.
    index:   (N,) int32 flat positions into (B * L) whose next token carries loss; N is rounded
             up to a multiple of ``pad_to`` with dummy positions of weight 0.
    targets: (N,) int32 the token to predict at each position; weights: (N,) float32 1 or 0.
    tokens:  real (non-padding) tokens in the batch; loss_tokens: positions with loss.
    """

    inputs: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    tokens: int
    loss_tokens: int


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def collate(samples: list[Sample], train_on_prompt: bool = False, pad_to: int = 16,
            pad_id: int = 0) -> Batch:
    inputs_len = [len(s.tokens) - 1 for s in samples]
    L = round_up(max(inputs_len), pad_to)
    inputs = np.full((len(samples), L), pad_id, dtype=np.int32)
    index, targets = [], []
    for b, s in enumerate(samples):
        n = inputs_len[b]
        inputs[b, :n] = s.tokens[:-1]
        # Position t predicts token t+1: the answer tokens tokens[prompt_len:] are predicted at
        # positions prompt_len-1 ... n-1.
        first = 0 if train_on_prompt else max(s.prompt_len - 1, 0)
        index.append(b * L + np.arange(first, n, dtype=np.int32))
        targets.append(s.tokens[first + 1: n + 1])
    index, targets, weights, n_loss = _loss_positions(index, targets, pad_to)
    return Batch(inputs, index, targets, weights, int(sum(inputs_len) + len(samples)), n_loss)


def _loss_positions(index: list[np.ndarray], targets: list[np.ndarray], pad_to: int):
    """The per-row loss positions and their target tokens joined into flat int32 arrays, padded
    with zeros to a multiple of ``pad_to``; returns (index, targets, weights, n_loss) where
    ``weights`` is 1.0 on the ``n_loss`` real positions and 0.0 on the padding."""
    index = np.concatenate(index)
    targets = np.concatenate(targets).astype(np.int32)
    n_loss = len(index)
    N = round_up(n_loss, pad_to)
    weights = np.zeros(N, dtype=np.float32)
    weights[:n_loss] = 1.0
    return (np.pad(index, (0, N - n_loss)).astype(np.int32), np.pad(targets, (0, N - n_loss)),
            weights, n_loss)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  bucket: int = 32) -> list[np.ndarray]:
    """The batches of one epoch as index arrays, a pure function of (seed, epoch).

    Length bucketing: the shuffled examples are cut into windows of ``bucket`` batches, each
    window is sorted by length and cut into batches (so a batch holds similar lengths and little
    padding), and the batch order is shuffled. Incomplete batches are dropped (at most
    batch_size - 1 examples per epoch), so every batch has the same size.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    window = batch_size * bucket
    batches = []
    for i in range(0, n, window):
        part = perm[i: i + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j: j + batch_size] for j in range(0, len(part) - batch_size + 1, batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def eval_batches(lengths: np.ndarray, batch_size: int, limit: int) -> list[np.ndarray]:
    """Fixed validation batches (the same at every evaluation, so losses compare): the set
    sorted by length and cut into batches; with a ``limit``, batches spread evenly over the
    lengths so short and long examples are both measured. The last batch may be partial."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if limit is not None and 0 < limit < len(batches):
        pick = np.linspace(0, len(batches) - 1, limit).round().astype(int)
        batches = [batches[i] for i in sorted(set(pick.tolist()))]
    return batches


# --------------------------------------------------------------------------- shared-prefix packing
#
# Text2SQL data repeats itself: several questions are asked about one schema, and the schema is
# most of each prompt (WikiSQL: ~3.2 questions per table, ~290 of ~330 tokens). A packed batch
# runs each distinct prompt prefix once (the "prefix pass", keeping every layer's keys and
# values) and each question's remainder (the "segment pass") attending to its group's prefix
# keys/values. Every example's loss is the same as if it were run alone (see
# trainer.make_packed_loss); only the repeated prefix work disappears.


@dataclass
class PrefixGroup:
    """Sample indices that share their first ``prefix_len`` tokens (prefix_len < every member's
    prompt_len, so each member's segment holds at least the position predicting its answer)."""

    prefix_len: int
    members: list[int]


def _common_prefix(arrays: list[np.ndarray], limit: int) -> int:
    n = min(limit, *(len(a) for a in arrays))
    first = arrays[0][:n]
    for a in arrays[1:]:
        diff = np.nonzero(a[:n] != first)[0]
        if len(diff):
            n = int(diff[0])
            first = first[:n]
    return n


def prefix_groups(samples: list[Sample]) -> list[PrefixGroup]:
    """Group samples by ``Sample.group`` (schema) and find each group's shared token prefix.
    Samples without a group are groups of one (their prefix is their prompt minus one token)."""
    by: dict[str, list[int]] = {}
    singles = []
    for i, s in enumerate(samples):
        if s.group is None:
            singles.append([i])
        else:
            by.setdefault(s.group, []).append(i)
    out = []
    for members in [*by.values(), *singles]:
        limit = min(samples[i].prompt_len for i in members) - 1
        n = _common_prefix([samples[i].tokens for i in members], limit) if len(members) > 1 else limit
        if n <= 0 and len(members) > 1:           # nothing shared: one group per member
            out += [PrefixGroup(max(samples[i].prompt_len - 1, 0), [i]) for i in members]
        else:
            out.append(PrefixGroup(max(n, 0), members))
    return out


def packed_epoch(groups: list[PrefixGroup], lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                 bucket: int = 32) -> list[list[tuple[int, list[int]]]]:
    """The batches of one epoch for shared-prefix packing, a pure function of (seed, epoch).

    Each batch holds exactly ``batch_size`` examples as pieces ``(prefix_len, [sample indices])``.
    Groups are shuffled (and the members within each), then cut into windows of ``bucket``
    batches' worth of examples sorted by prefix length (little left padding), and batches are
    filled in that order: a group that does not fit the room left is split, its prefix then
    computed once per piece. The incomplete last batch is dropped, as in :func:`epoch_batches`.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(groups))
    shuffled = [(groups[g].prefix_len, [groups[g].members[j] for j in rng.permutation(len(groups[g].members))])
                for g in order]
    window = batch_size * bucket
    flat: list[tuple[int, list[int]]] = []
    i = 0
    while i < len(shuffled):
        part, count = [], 0
        while i < len(shuffled) and count < window:
            part.append(shuffled[i])
            count += len(shuffled[i][1])
            i += 1
        part.sort(key=lambda pm: (pm[0], max(lengths[m] - pm[0] for m in pm[1])))
        flat += part
    batches = _fill_runs(flat, itertools.repeat(batch_size))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def split_pieces(pieces: list[tuple[int, list[int]]], parts: int) -> list[list[tuple[int, list[int]]]]:
    """Cut a batch's pieces into ``parts`` runs of (nearly) equal example counts."""
    total = sum(len(m) for _, m in pieces)
    sizes = [total // parts + (k < total % parts) for k in range(parts)]
    return [p for p in _fill_runs(pieces, iter(sizes)) if p]


def _fill_runs(pieces: list[tuple[int, list[int]]], sizes) -> list[list[tuple[int, list[int]]]]:
    """Cut ``pieces`` (prompt length, member rows) in order into runs of the next size from the
    iterator ``sizes`` (0 once it is spent) members each, splitting a piece's members where a run
    fills; a last run that is not full is dropped."""
    out, current, room = [], [], next(sizes, 0)
    for plen, members in pieces:
        while members:
            take, members = members[:room], members[room:]
            current.append((plen, take))
            room -= len(take)
            if room == 0:
                out.append(current)
                current, room = [], next(sizes, 0)
    return out


@dataclass
class PackedBatch:
    """A shared-prefix batch (see :func:`packed_epoch`).

    prefix_inputs: (G, Lp) int32, each group's prefix LEFT-padded (so every prefix ends at
        position Lp - 1 and its segments continue at Lp; RoPE only sees relative positions).
    prefix_lens:   (G,) int32 real prefix lengths.
    seg_inputs:    (R, Ls) int32, each example's remaining input tokens, right-padded.
    group_index:   (R,) int32, the prefix row of each segment row.
    index/targets/weights: as in :class:`Batch`, flat positions into (R * Ls).
    tokens: the examples' standalone lengths (effective tokens); computed: tokens actually run.
    """

    prefix_inputs: np.ndarray
    prefix_lens: np.ndarray
    seg_inputs: np.ndarray
    group_index: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    tokens: int
    loss_tokens: int
    computed: int

    def arrays(self) -> tuple:
        return (self.prefix_inputs, self.prefix_lens, self.seg_inputs, self.group_index,
                self.index, self.targets, self.weights)


def collate_packed(samples: list[Sample], pieces: list[tuple[int, list[int]]], pad_to: int = 16,
                   pad_id: int = 0) -> PackedBatch:
    plens = [p for p, _ in pieces]
    Lp = round_up(max(plens), pad_to)
    prefix = np.full((len(pieces), Lp), pad_id, dtype=np.int32)
    rows, gidx = [], []
    for g, (p, members) in enumerate(pieces):
        first = samples[members[0]].tokens
        if p:
            prefix[g, Lp - p:] = first[:p]
        for m in members:
            rows.append((g, p, samples[m]))
            gidx.append(g)
    seg_lens = [len(s.tokens) - 1 - p for _, p, s in rows]
    Ls = round_up(max(seg_lens), pad_to)
    seg = np.full((len(rows), Ls), pad_id, dtype=np.int32)
    index, targets = [], []
    for r, ((g, p, s), n) in enumerate(zip(rows, seg_lens)):
        seg[r, :n] = s.tokens[p:-1]
        # segment position t is sequence position p + t; the answer tokens tokens[prompt_len:]
        # are predicted at sequence positions prompt_len-1 ... len-2.
        first = s.prompt_len - 1 - p
        index.append(r * Ls + np.arange(first, n, dtype=np.int32))
        targets.append(s.tokens[s.prompt_len: len(s.tokens)])
    index, targets, weights, n_loss = _loss_positions(index, targets, pad_to)
    tokens = sum(len(s.tokens) for _, _, s in rows)
    computed = sum(plens) + sum(seg_lens)
    return PackedBatch(prefix, np.asarray(plens, dtype=np.int32), seg, np.asarray(gidx, dtype=np.int32),
                       index, targets, weights, int(tokens), n_loss, int(computed))
