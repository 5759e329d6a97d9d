"""A renderer for the subset of Go's text/template that our Ollama templates use, so an export
can check that its Modelfile template renders exactly the prompt the adapter was trained on.

Supported: literal text; ``{{- ...}}`` / ``{{... -}}`` whitespace trimming; output of ``.Field``,
``$.Field``, ``$var`` and "string literals"; ``if`` / ``else if`` / ``else`` / ``end`` with a
condition that is a value (true when non-empty), ``eq A B``, ``ne A B`` or ``not A``;
``range .Messages`` (the dot is each message: ``.Role``, ``.Content``); variables declared with
``$x := value`` and assigned with ``$x = value`` (one scope, as Go's assignment inside a range
updates the outer variable). Anything else raises ValueError.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _lex(source: str) -> list[tuple[str, str]]:
    """``[("text", s) | ("action", body)]`` with trim markers applied to the neighbouring text."""
    parts: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip()
    if tail:
        parts.append(("text", tail))
    return parts


def _parse(parts: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """Nodes up to an action starting with one of ``stop``; returns (nodes, index, that action)."""
    nodes: list = []
    while i < len(parts):
        kind, body = parts[i]
        i += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else") and (word in stop or "end" in stop):
            return nodes, i, body
        if word == "if":
            branches, else_body = [], []
            cond = body[2:].strip()
            while True:
                inner, i, closer = _parse(parts, i, ("else", "end"))
                branches.append((cond, inner))
                if closer == "end":
                    break
                if closer.startswith("else if "):
                    cond = closer[len("else if "):].strip()
                    continue
                else_body, i, closer = _parse(parts, i, ("end",))
                if closer != "end":
                    raise ValueError("{{ else }} without a matching {{ end }}")
                break
            nodes.append(("if", branches, else_body))
        elif word == "range":
            what = body[5:].strip()
            if what != ".Messages":
                raise ValueError(f"unsupported range {what!r} (only .Messages)")
            inner, i, closer = _parse(parts, i, ("end",))
            if closer != "end":
                raise ValueError("{{ range }} without {{ end }}")
            nodes.append(("range", inner))
        elif re.fullmatch(r"\$\w+\s*:?=.*", body, re.S):
            var, _, expr = re.split(r"\s*(:?=)\s*", body, maxsplit=1)
            nodes.append(("set", var, expr))
        else:
            nodes.append(("out", body))
    if stop:
        raise ValueError(f"missing {{{{ {stop[-1]} }}}}")
    return nodes, i, ""


def _value(token: str, dot: dict, root: dict, env: dict) -> Any:
    if token.startswith('"'):
        return shlex.split(token)[0] if token != '""' else ""
    if token.startswith("$."):
        return root.get(token[2:], "")
    if token.startswith("$"):
        if token not in env:
            raise ValueError(f"undefined variable {token}")
        return env[token]
    if token.startswith("."):
        return dot.get(token[1:], "")
    raise ValueError(f"unsupported expression {token!r}")


def _eval(expr: str, dot: dict, root: dict, env: dict) -> Any:
    tokens = shlex.split(expr, posix=False)
    if not tokens:
        raise ValueError("empty action")
    head, args = tokens[0], [_value(t, dot, root, env) for t in tokens[1:]]
    if head == "eq" and len(args) == 2:
        return args[0] == args[1]
    if head == "ne" and len(args) == 2:
        return args[0] != args[1]
    if head == "not" and len(args) == 1:
        return not args[0]
    if len(tokens) == 1:
        return _value(head, dot, root, env)
    raise ValueError(f"unsupported expression {expr!r}")


def _run(nodes: list, dot: dict, root: dict, env: dict, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            out.append(str(_eval(node[1], dot, root, env)))
        elif kind == "set":
            env[node[1]] = _eval(node[2], dot, root, env)
        elif kind == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, root, env):
                    _run(body, dot, root, env, out)
                    break
            else:
                _run(node[2], dot, root, env, out)
        elif kind == "range":
            for message in root.get("Messages", []):
                _run(node[1], message, root, env, out)


def render(source: str, values: dict) -> str:
    """Render Go template ``source`` with ``values`` (e.g. ``{"System": ..., "Messages": [{"Role":
    ..., "Content": ...}]}``)."""
    nodes, _, _ = _parse(_lex(source))
    out: list[str] = []
    _run(nodes, values, values, {}, out)
    return "".join(out)
