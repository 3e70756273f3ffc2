"""What a stream shows: incremental text (no half characters, no start of a stop string shown early),
token bytes, prompt rendering and the request errors that name their field."""

from __future__ import annotations

import pytest
import torch

from dora_core.serving import AdapterSlots, Engine, GenerationParams, RequestError, render_chat, render_text
from dora_core.serving.detokenize import IncrementalText, TokenTexts
from tests.support.serving import load_tiny

TEXT = "Grüße, 東京 ✓ fine — the STOP sign, ST and S."


def _pieces(tokenizer, text, stop=()):
    stream = IncrementalText(tokenizer, stop)
    pieces, stopped = [], False
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        piece, stopped = stream.add(token)
        pieces.append(piece)
        if stopped:
            break
    if not stopped:
        pieces.append(stream.flush())
    return pieces, stopped


def test_a_character_split_over_tokens_is_shown_once_whole(tiny_tokenizer):
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    partial = [i for i in ids if "\ufffd" in tiny_tokenizer.decode([i])]
    assert partial, "the text must hold characters that one token does not complete"
    pieces, stopped = _pieces(tiny_tokenizer, TEXT)
    assert not stopped
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)
    texts = TokenTexts(tiny_tokenizer)
    assert b"".join(texts(i)[1] for i in ids) == TEXT.encode("utf-8")  # exact bytes, also of partial tokens


@pytest.mark.parametrize(("stop", "shown"), [(("STOP",), "Grüße, 東京 ✓ fine — the "),
                                             (("S.", "zzz"), "Grüße, 東京 ✓ fine — the STOP sign, ST and "),
                                             (("never",), TEXT)], ids=["STOP", "S.", "never"])
def test_text_ends_before_a_stop_string_and_its_start_is_held_back(tiny_tokenizer, stop, shown):
    pieces, stopped = _pieces(tiny_tokenizer, TEXT, stop)
    assert "".join(pieces) == shown
    assert stopped == (shown != TEXT)
    emitted = ""
    for piece in pieces[:-1]:  # until the end, nothing shown could still turn into a stop string
        emitted += piece
        assert not any(emitted.endswith(s[:k]) for s in stop for k in range(1, len(s) + 1)), emitted


def test_chat_and_text_prompts_render_with_the_tokenizers_template(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = render_chat(tiny_tokenizer, messages, max_length=2048)
    text = tiny_tokenizer.decode(ids)
    assert text == "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert ids.count(tiny_tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    assert render_text(tiny_tokenizer, "Hi", max_length=2048)[0] == tiny_tokenizer.bos_token_id
    with pytest.raises(RequestError) as error:
        render_chat(tiny_tokenizer, messages, max_length=len(ids))
    assert error.value.param == "messages" and "context holds" in str(error.value)
    with pytest.raises(RequestError) as error:
        render_text(tiny_tokenizer, "word " * 50, max_length=20)
    assert error.value.param == "prompt"


def test_a_template_that_fails_is_the_requests_error(tiny_tokenizer):
    import copy

    strict = copy.deepcopy(tiny_tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}"
                            "{% endfor %}")
    with pytest.raises(RequestError, match="System role not supported") as error:
        render_chat(strict, [{"role": "system", "content": "x"}], max_length=100)
    assert error.value.param == "messages"
    strict.chat_template = None
    with pytest.raises(RequestError, match="no chat template"):
        render_chat(strict, [{"role": "user", "content": "x"}], max_length=100)


@pytest.mark.parametrize(("field", "value"), [("max_tokens", 0), ("temperature", -0.5), ("top_p", 0.0),
                                              ("top_p", 1.5), ("top_logprobs", -1), ("stop", ("",)),
                                              ("seed", 2**64), ("temperature", float("nan"))])
def test_bad_generation_params_name_their_field(field, value):
    with pytest.raises(RequestError) as error:
        GenerationParams(**{"max_tokens": 4, field: value})
    assert error.value.param == field


def test_submit_refuses_prompts_it_cannot_run(tiny_model_dir, tiny_tokenizer):
    model = load_tiny(tiny_model_dir)
    engine = Engine(model, tiny_tokenizer, AdapterSlots.install(model, slots=2, max_rank=2))
    engine.start()
    try:
        for prompt in ([], [5, 10**6], [1] * model.config.max_position_embeddings):
            with pytest.raises(RequestError) as error:
                engine.submit(prompt, 0, GenerationParams(max_tokens=1))
            assert error.value.param == "prompt"
        with pytest.raises(ValueError, match="slot must be in 0..1"):
            engine.submit([1], 2, GenerationParams(max_tokens=1))
    finally:
        engine.stop()


def test_the_windowed_decoding_gives_the_whole_lists_text(tiny_tokenizer):
    """Any ids, special tokens and broken characters included: the pieces add up to decode(all ids)."""
    ids = torch.randint(0, len(tiny_tokenizer), (400,), generator=torch.Generator().manual_seed(0)).tolist()
    stream = IncrementalText(tiny_tokenizer, ())
    text = "".join(stream.add(token)[0] for token in ids) + stream.flush()
    assert text == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert stream.anchor > len(ids) - 10  # the window moved along: it did not decode everything each time
