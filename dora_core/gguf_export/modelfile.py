"""An Ollama Modelfile next to model.gguf, so `ollama create NAME -f Modelfile` gives a chat model.

What it holds, and why:

- `FROM ./model.gguf`: relative, so the folder can be moved or downloaded as a whole.
- `TEMPLATE`, only when the chat template is ChatML (`<|im_start|>role\\n...<|im_end|>\\n`: SmolLM2,
  Qwen2 and many fine-tunes), found by rendering a sample conversation with the tokenizer's own
  template and comparing it with ChatML, not by reading the Jinja source. We write Ollama's classic
  `.System`/`.Prompt`/`.Response` ChatML template, the form every Ollama release understands and
  which Ollama repeats once per turn for the history. A template that adds a default system prompt
  when none is given (SmolLM2's does) becomes `SYSTEM`, so Ollama says the same by default. Any
  other chat template is left to Ollama, which reads `tokenizer.chat_template` from the GGUF and
  maps it onto one of its own templates: translating arbitrary Jinja into Go templates would be a
  guess.
- `PARAMETER stop` for each end-of-turn token: the tokenizer's eos, every eos id of the model's
  generation config (a chat model lists its end-of-turn token there, e.g. `<|end|>` beside `</s>`),
  and `<|im_end|>` for ChatML; so generation ends where the turn ends.
"""

from __future__ import annotations

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
_SAMPLE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def is_chatml(tokenizer) -> bool:
    if not tokenizer.chat_template:
        return False
    try:
        rendered = _render(tokenizer, _SAMPLE)
    except Exception:  # noqa: BLE001 - a template that cannot render this sample is not ChatML
        return False
    expected = f"{IM_START}system\nS{IM_END}\n{IM_START}user\nU{IM_END}\n{IM_START}assistant\n"
    return rendered in (expected, f"{tokenizer.bos_token or ''}{expected}")  # some templates write bos first


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt a ChatML template writes when the conversation has none."""
    rendered = _render(tokenizer, [{"role": "user", "content": "U"}])
    opening = f"{IM_START}system\n"
    start = rendered.find(opening)
    if start < 0 or start > rendered.find(f"{IM_START}user\n"):
        return None
    return rendered[start + len(opening):rendered.index(IM_END, start)]


def stop_tokens(tokenizer, eos_token_ids, *, chatml: bool) -> list[str]:
    ids = [] if eos_token_ids is None else [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    stops += [tokenizer.convert_ids_to_tokens(index) for index in ids]
    if chatml:
        stops.append(IM_END)
    return list(dict.fromkeys(stop for stop in stops if stop))  # each once, in order


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile value cannot hold """')
    return f'"""{text}"""'


def modelfile_text(tokenizer, *, eos_token_ids, gguf_name: str) -> str:
    """The Modelfile for `gguf_name` (a file in the same folder); eos_token_ids: the generation config's."""
    chatml = is_chatml(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if chatml:
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE)}")
        system = default_system_prompt(tokenizer)
        if system:
            lines.append(f"SYSTEM {_quoted(system)}")
    # one-line values in plain double quotes, as Ollama's own Modelfiles write stop tokens
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_tokens(tokenizer, eos_token_ids, chatml=chatml)
              if '"' not in stop and "\n" not in stop]
    return "\n".join(lines) + "\n"
