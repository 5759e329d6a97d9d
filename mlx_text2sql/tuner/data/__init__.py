"""Training data: JSONL records -> token sequences with an answer boundary -> padded batches.

NumPy and a tokenizer only: importing this package imports no MLX. The modules, in the order
the data flows: :mod:`.records` (the record forms, checked), :mod:`.encode` (:class:`Encoder`:
tokens and the answer boundary), :mod:`.trim` (shorter schemas for long examples),
:mod:`.load` (a JSONL split -> :class:`TokenizedSet`), :mod:`.batches` (padded batches, epoch
order) and :mod:`.packing` (shared-prefix batches).

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

from .batches import Batch, collate, epoch_batches, eval_batches, round_up
from .encode import Encoder, Sample
from .load import DataStats, TokenizedSet, load_split
from .packing import PackedBatch, PrefixGroup, collate_packed, packed_epoch, prefix_groups, split_pieces
from .trim import split_tables, table_name, trimmed_schemas

__all__ = ["Batch", "DataStats", "Encoder", "PackedBatch", "PrefixGroup", "Sample", "TokenizedSet", "collate",
           "collate_packed", "epoch_batches", "eval_batches", "load_split", "packed_epoch", "prefix_groups",
           "round_up", "split_pieces", "split_tables", "table_name", "trimmed_schemas"]
