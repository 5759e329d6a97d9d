"""The official ``openai`` Python client against ``/v1/chat/completions`` and ``/v1/models``,
streaming and not, with and without an API key."""

from __future__ import annotations

import pytest
from serverkit import REPLY

from mlx_text2sql.server.app import default_model_id

openai = pytest.importorskip("openai", reason="the openai client is a test dependency: pip install -e '.[test]'")


@pytest.fixture
def server(serve, programmed_service, music_db):
    return serve(programmed_service, [music_db], api_key="k-123")


def client(server, key="k-123"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_models_and_a_completion(server, programmed_service):
    c = client(server)
    [model] = c.models.list().data
    assert model.id == default_model_id(programmed_service)
    r = c.chat.completions.create(model=model.id, messages=[{"role": "system", "content": "SQL only."},
                                                            {"role": "user", "content": "who is over 30?"}])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip() == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    r = c.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "q"}], max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert REPLY.startswith(r.choices[0].message.content)


def test_streaming(server, programmed_service):
    c = client(server)
    stream = c.chat.completions.create(model=default_model_id(programmed_service), stream=True,
                                       messages=[{"role": "user", "content": [{"type": "text", "text": "who?"}]}],
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == REPLY
    pieces = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 1  # sent as it was generated, not in one piece
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({ch.id for ch in chunks}) == 1


def test_errors_reach_the_client_as_its_exceptions(server, programmed_service):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError, match="no model"):
        client(server).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client(server).chat.completions.create(model=default_model_id(programmed_service), max_tokens=100000,
                                               messages=[{"role": "user", "content": "q"}])
