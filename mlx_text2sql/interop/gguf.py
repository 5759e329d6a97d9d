"""Export to llama.cpp / Ollama: the fused model as a GGUF file plus an Ollama ``Modelfile``.

The adapter is merged into a dense copy of its base (``W + scale * (A B)^T``, each fused layer
checked against base + adapter on a probe input, as ``fuse`` does), then written as an f16 or
f32 llama GGUF carrying the tokenizer and chat template. The Modelfile carries the Go-template
form of the chat template, the system prompt and the stop strings the adapter was trained with
(from its adapter_config.json), checked by rendering it back to the training prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ModelError
from .ollama import choose_go_template, go_messages, modelfile_text, parse_modelfile, runtime_prompt
from .source import Source, log

MODELFILE = "Modelfile"


def _prompt_settings(source: Source) -> tuple[str, list[str]]:
    """(system prompt, stop strings) the adapter was trained with; the package defaults for an
    adapter whose config does not record them (an mlx_lm adapter)."""
    from ..prompts import SYSTEM_PROMPT

    prompt = source.cfg.get("prompt") or {}
    system = prompt.get("system_prompt") or SYSTEM_PROMPT
    stops = list(prompt.get("stop") or source.lm.stop)
    eos = prompt.get("eos") or source.lm.eos
    if eos and eos not in stops:
        stops.insert(0, eos)
    return system, stops


def write_modelfile(source: Source, out: Path, model: str, adapter: str = "") -> dict:
    """Write ``Modelfile`` (FROM ``model``, ADAPTER ``adapter`` when given) into ``out``; checks
    that it parses and that its template renders the training prompt of a sample conversation
    exactly. Returns a summary."""
    from ..prompts import build_messages

    system, stops = _prompt_settings(source)
    name, template = choose_go_template(source.lm.tokenizer)
    text, skipped = modelfile_text(model, template, system, stops, source=str(source.adapter_dir), adapter=adapter)
    parsed = parse_modelfile(text)
    msgs = build_messages("How many singers are there?", 'CREATE TABLE "singer" ("name" TEXT);', system=system)
    want = runtime_prompt(getattr(source.lm.tokenizer, "_tokenizer", source.lm.tokenizer), msgs)
    got = parse_and_render(parsed, msgs[1:])
    if got != want:
        raise ModelError(f"the Modelfile template ({name}) does not reproduce the training prompt: "
                         f"{got[:80]!r} vs {want[:80]!r}")
    (out / MODELFILE).write_text(text, encoding="utf-8")
    for s in skipped:
        log(f"[export] warning: stop string {s!r} cannot be written in a Modelfile (quote/newline); skipped")
    return {"template": name, "stop": [s for s in stops if s not in skipped]}


def parse_and_render(modelfile, messages: list[dict]) -> str:
    """The prompt Ollama builds for ``messages`` (no system message: SYSTEM supplies it)."""
    from .gotemplate import render

    msgs = list(messages)
    if modelfile.system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": modelfile.system})
    return render(modelfile.template, go_messages(msgs))


def export_gguf_folder(source: Source, out: Path, final: Path, dtype: str = "f16",
                       modelfile: bool = True) -> dict:
    """Fuse the adapter into its base and write ``model-<dtype>.gguf`` (+ ``Modelfile``) into
    ``out`` (a staging folder that becomes ``final``). Returns a summary."""
    from ..models.gguf import export_gguf
    from ..tuner.fusecheck import probe_lora_layers, verify_fused
    from ..tuner.lora import fuse_lora, lora_layers

    model = source.lm.model
    n_lora = len(lora_layers(model))
    checks = probe_lora_layers(model)
    fuse_lora(model, dequantize=True)  # GGUF holds dense f16/f32 weights: merge in float, no re-quantizing
    summary = verify_fused(model, checks, n_lora)
    log(f"[export] fused {n_lora} layers; fused vs base+adapter relative error {summary['relative_error']:.2e}")
    name = f"model-{dtype}.gguf"
    t = time.perf_counter()
    export_gguf(model, source.lm.tokenizer, dict(source.lm.config), out / name, dtype=dtype)
    log(f"[export] wrote {name} ({(out / name).stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t:.1f}s")
    result = {"files": [name], "verification": summary,
              "usage": f"llama-cli -m {final / name} --jinja -cnv"}
    if modelfile:
        result["modelfile"] = write_modelfile(source, out, f"./{name}")
        result["files"].append(MODELFILE)
        result["usage"] += f"\n  ollama create text2sql -f {final / MODELFILE} && ollama run text2sql"
    return result
