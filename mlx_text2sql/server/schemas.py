"""Request and response models. Requests refuse unknown fields of our own routes (a typo such
as ``max_row`` is a 422, not silently ignored); the OpenAI-compatible request accepts the
fields OpenAI clients may send and ignores those that do not apply (``logprobs``, ``user``...).
Limits that depend on the server's settings are checked in the routes (:mod:`.app`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- our routes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SQLRequest(_Strict):
    database: str = Field(description="a name from GET /v1/databases")
    question: str = Field(min_length=1)
    execute: bool = True
    max_rows: int | None = Field(None, ge=1, description="default: 100, or the server's limit when lower")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    fix_values: bool = Field(False, description="value repair of miscopied literals")
    fix_names: bool = Field(False, description="name repair of tables and columns the database does not have")
    constrain_names: bool = Field(False, description="schema-constrained decoding: only names the database has "
                                                     "(greedy: temperature 0)")
    constrained_retry: bool = Field(False, description="a query that raises an error is decoded again under the "
                                                       "name constraint")
    exec_guided: int = Field(0, ge=0, description="execution-guided decoding: samples voted on (0: off)")
    select_schema: bool | None = Field(None, description="show only the tables the question is about (None: auto)")
    tables: list[str] | None = Field(None, description="the tables to show ([]: all; default: by select_schema)")
    value_hints: bool | None = None
    sample_rows: int | None = Field(None, ge=0, le=10)


class Timings(BaseModel):
    queue_s: float
    prompt_s: float
    decode_s: float
    execute_s: float
    total_s: float


class SQLResponse(BaseModel):
    database: str
    question: str
    sql: str | None
    reply: str
    sql_greedy: str | None
    name_fixes: list[dict[str, Any]] = Field(
        default_factory=list, description="name repair's changes (fix_names): kind, table, old, new, score")
    value_fixes: list[dict[str, Any]] = Field(
        default_factory=list, description="value repair's changes (fix_values): table, column, old, new, ratio")
    columns: list[str] | None
    rows: list[list[Any]] | None
    truncated: bool
    error_kind: str | None
    error: str | None
    timings: Timings
    model: str


class ExecuteRequest(_Strict):
    database: str
    sql: str = Field(min_length=1)
    max_rows: int | None = Field(None, ge=1, description="default: 100, or the server's limit when lower")


class ExecuteResponse(BaseModel):
    database: str
    sql: str
    columns: list[str] | None
    rows: list[list[Any]] | None
    truncated: bool
    error_kind: str | None
    error: str | None
    execute_s: float


class ColumnInfo(BaseModel):
    name: str
    type: str
    primary_key: bool


class ForeignKey(BaseModel):
    column: str
    table: str
    references: str


class TableInfo(BaseModel):
    name: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    foreign_keys: list[ForeignKey]
    rows: int | None


class DatabaseInfo(BaseModel):
    name: str
    tables: list[TableInfo]


class DatabaseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatabaseInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    databases: int
    auth: bool = Field(description="whether /v1 routes need an API key")
    queued: int
    batches: int
    prefix_cache: dict | None = Field(None, description="schema prefixes kept: entries, bytes, max_bytes")


# --------------------------------------------------------------------------- OpenAI-compatible


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-text2sql"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
