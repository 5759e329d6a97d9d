"""Ollama ``Modelfile`` for an exported GGUF: chat template (Go template syntax), system prompt,
stop strings and greedy decoding, as the adapter was trained.

The Go template is chosen by rendering: each known chat format's Go template (ChatML, Zephyr,
Mistral [INST], Llama 2, plain) is rendered with :mod:`.gotemplate` on probe conversations and
compared with the tokenizer's own chat template (what training used); the one that gives the
same text is written, and a tokenizer template none of them reproduces is an error. A leading
BOS token is left to the runtime (llama.cpp adds it from the GGUF metadata), as for training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ModelError
from .gotemplate import render

# {eos} is replaced by the tokenizer's EOS text. Messages are Ollama's (.Role, .Content); the
# SYSTEM line of the Modelfile arrives as the first message when a request has none.
_GO_TEMPLATES = {
    "chatml": ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
               "{{ end }}<|im_start|>assistant\n"),
    "zephyr": "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}{eos}\n{{ end }}<|assistant|>\n",
    # [INST] formats put the system text inside the first user turn.
    "mistral": ('{{- $prev := "" }}{{- range .Messages }}'
                '{{ if eq .Role "system" }}[INST] {{ .Content }}\n\n'
                '{{ else if eq .Role "user" }}{{ if ne $prev "system" }}[INST] {{ end }}{{ .Content }} [/INST]'
                '{{ else }}{{ .Content }}{eos}{{ end }}{{ $prev = .Role }}{{ end }}'),
    "llama2": ('{{- $prev := "" }}{{- range .Messages }}'
               '{{ if eq .Role "system" }}[INST] <<SYS>>\n{{ .Content }}\n<</SYS>>\n\n'
               '{{ else if eq .Role "user" }}{{ if ne $prev "system" }}[INST] {{ end }}{{ .Content }} [/INST]'
               '{{ else }} {{ .Content }} {eos}{{ end }}{{ $prev = .Role }}{{ end }}'),
    "plain": ('{{- range .Messages }}{{ if eq .Role "assistant" }}SQL: {{ .Content }}{eos}'
              '{{ else }}{{ .Content }}\n\n{{ end }}{{ end }}SQL: '),
}

_PROBES = [
    [{"role": "system", "content": "You write SQL."},
     {"role": "user", "content": "Schema:\nCREATE TABLE t (a INT);\n\nQuestion: how many rows?"}],
    [{"role": "system", "content": "S2"}, {"role": "user", "content": "first"},
     {"role": "assistant", "content": "SELECT 1"}, {"role": "user", "content": "second"}],
]


@dataclass
class Modelfile:
    """What a Modelfile says (the parts we write)."""

    model: str
    template: str
    system: str
    parameters: dict[str, list[str]] = field(default_factory=dict)
    adapter: str = ""


def go_messages(messages: list[dict]) -> dict:
    """Our chat messages as the values an Ollama template sees."""
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return {"Messages": msgs, "System": system}


def adds_bos(hf_tok) -> bool:
    """Whether the tokenizer puts a BOS token in front of encoded text by itself (and so the
    GGUF says ``add_bos_token``, and llama.cpp adds it too)."""
    bos_id = getattr(hf_tok, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = hf_tok.encode("x", add_special_tokens=True)
    return len(ids) > len(hf_tok.encode("x", add_special_tokens=False)) and ids[0] == bos_id


def runtime_prompt(hf_tok, messages: list[dict]) -> str:
    """The text a runtime must tokenize to get the training prompt's tokens: the chat
    template's rendering, less a leading BOS text when the runtime adds the BOS token itself
    (training encodes a prompt that starts with the BOS text without adding another)."""
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = hf_tok.bos_token
    if bos and text.startswith(bos) and adds_bos(hf_tok):
        return text[len(bos):]
    return text


def choose_go_template(tokenizer) -> tuple[str, str]:
    """``(format name, Go template)`` that renders what the tokenizer's chat template does on the
    probe conversations (the training prompt: system + user + generation prompt). ModelError
    when none does."""
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    eos, bos = hf_tok.eos_token or "", hf_tok.bos_token or ""
    wanted = [runtime_prompt(hf_tok, msgs) for msgs in _PROBES[:1]]
    multi = runtime_prompt(hf_tok, _PROBES[1])
    single = []
    for name, tpl in _GO_TEMPLATES.items():
        tpl = tpl.replace("{eos}", eos)
        # a template whose text starts with a BOS the runtime does not add writes it itself
        for t in (tpl, bos + tpl) if bos else (tpl,):
            if all(render(t, go_messages(m)) == w for m, w in zip(_PROBES, wanted)):
                if render(t, go_messages(_PROBES[1])) == multi:
                    return name, t
                single.append((name, t))
    if single:  # right for the training prompt; multi-turn history differs only
        return single[0]
    raise ModelError(
        "the tokenizer's chat template matches none of the formats an Ollama Modelfile can be written "
        f"for ({', '.join(_GO_TEMPLATES)}); its training prompt looks like {wanted[0][:120]!r}. "
        "Pass --no-modelfile to write the GGUF alone (llama.cpp reads the template from it)")


def _quoted(value: str) -> str | None:
    if '"' in value or "\n" in value or "\\" in value:
        return None
    return f'"{value}"'


def modelfile_text(model: str, template: str, system: str, stops: list[str], source: str = "",
                   adapter: str = "") -> tuple[str, list[str]]:
    """The Modelfile text and the stop strings it could not carry (quotes, newlines).

    model: FROM's argument (a GGUF path); adapter: ADAPTER's (a LoRA GGUF path) or ""."""
    for what, text in (("chat template", template), ("system prompt", system)):
        if '"""' in text:
            raise ModelError(f"the {what} contains '\"\"\"', which a Modelfile cannot quote")
    lines = [f"# Ollama model for the mlx-text2sql adapter {source}".rstrip(),
             "# ollama create NAME -f Modelfile && ollama run NAME", "", f"FROM {model}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    skipped = []
    for s in dict.fromkeys(stops):
        q = _quoted(s)
        if q is None:
            skipped.append(s)
        else:
            lines.append(f"PARAMETER stop {q}")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n", skipped


_TRIPLE = re.compile(r'^(TEMPLATE|SYSTEM)\s+"""(.*?)"""\s*$', re.S | re.M)


def parse_modelfile(text: str) -> Modelfile:
    """Read back the instructions we write: FROM, TEMPLATE and SYSTEM (triple-quoted), PARAMETER."""
    blocks = {m.group(1): m.group(2) for m in _TRIPLE.finditer(text)}
    rest = _TRIPLE.sub("", text)
    model, adapter, params = "", "", {}
    for line in rest.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, value = line.partition(" ")
        if word.upper() == "FROM":
            model = value.strip()
        elif word.upper() == "ADAPTER":
            adapter = value.strip()
        elif word.upper() == "PARAMETER":
            key, _, val = value.strip().partition(" ")
            val = val.strip()
            params.setdefault(key, []).append(val[1:-1] if len(val) > 1 and val[0] == val[-1] == '"' else val)
        else:
            raise ValueError(f"unexpected Modelfile line: {line!r}")
    if not model or "TEMPLATE" not in blocks:
        raise ValueError("a Modelfile needs FROM and TEMPLATE")
    return Modelfile(model=model, template=blocks["TEMPLATE"], system=blocks.get("SYSTEM", ""), parameters=params,
                     adapter=adapter)
