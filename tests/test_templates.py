"""Assistant-token masks: exactly the assistant content plus the end-of-turn marker, every turn."""

import pytest

from curation.data.load import RecordError
from curation.data.templates import Template, encode, encode_many, resolve_template

MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1 + 1?"},
    {"role": "assistant", "content": "1 + 1 = 2"},
    {"role": "user", "content": "And 2 * 3?"},
    {"role": "assistant", "content": "2 * 3 = 6\n"},
]


def target_text(tok, enc):
    return tok.decode(enc.input_ids[enc.target].tolist())


def test_chatml_mask_is_each_assistant_turn_with_its_end_marker(tiny_tokenizer):
    t = resolve_template(tiny_tokenizer)
    assert t.name == "chat"
    enc = encode(tiny_tokenizer, t, MULTI, max_length=1000)
    assert target_text(tiny_tokenizer, enc) == "1 + 1 = 2<|im_end|>\n2 * 3 = 6\n<|im_end|>\n"
    # The rendering tokenised at once equals the concatenation the model sees.
    full = tiny_tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert tiny_tokenizer.decode(enc.input_ids.tolist()) == full
    assert enc.n_prompt_tokens + enc.n_response_tokens == len(enc.input_ids)
    assert not enc.truncated


def test_response_start_is_where_the_final_assistant_turn_begins(tiny_tokenizer):
    """The tokens before it are the prompt the last response was given (earlier turns included)."""
    t = resolve_template(tiny_tokenizer)
    enc = encode(tiny_tokenizer, t, MULTI, max_length=1000)
    prompt = tiny_tokenizer.apply_chat_template(MULTI[:-1], tokenize=False, add_generation_prompt=True)
    assert tiny_tokenizer.decode(enc.input_ids[: enc.response_start].tolist()) == prompt
    assert tiny_tokenizer.decode(enc.input_ids[enc.response_start:].tolist()) == "2 * 3 = 6\n<|im_end|>\n"
    assert enc.target[enc.response_start:].all() and enc.target[enc.response_start - 1] == False  # noqa: E712
    cut = encode(tiny_tokenizer, t, MULTI, max_length=5)  # no target left: all of it is prompt
    assert cut.response_start == len(cut.input_ids) == 5


def test_alpaca_template_when_no_chat_template():
    from tests.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer(chat_template=None)
    t = resolve_template(tok)
    assert t.name == "alpaca"
    enc = encode(tok, t, MULTI[1:3], max_length=1000)
    text = tok.decode(enc.input_ids.tolist())
    assert text.startswith("<|im_start|>Below is an instruction")
    assert "### Instruction:\nWhat is 1 + 1?\n\n### Response:\n1 + 1 = 2<|im_end|>\n\n" in text
    assert target_text(tok, enc) == "1 + 1 = 2<|im_end|>\n\n"
    with pytest.raises(ValueError, match="no chat template"):
        resolve_template(tok, "chat")


def test_truncation_flags_and_empty_targets(tiny_tokenizer):
    t = resolve_template(tiny_tokenizer)
    full = encode(tiny_tokenizer, t, MULTI, max_length=1000)
    cut = encode(tiny_tokenizer, t, MULTI, max_length=len(full.input_ids) - 3)
    assert cut.truncated and cut.n_tokens_full == len(full.input_ids)
    assert (cut.target == full.target[: len(cut.input_ids)]).all()
    tiny = encode(tiny_tokenizer, t, MULTI, max_length=5)
    assert tiny.truncated and tiny.n_response_tokens == 0


def test_template_that_rewrites_history_is_rejected(tiny_tokenizer):
    # Renders only the last assistant turn: earlier prefixes are not prefixes of the whole.
    odd = Template("odd", "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                   "{{ m['content'] }}|{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    [res] = encode_many(tiny_tokenizer, odd, [MULTI], 1000)
    assert isinstance(res, RecordError) and "prefix" in str(res)


def test_custom_jinja_file(tmp_path, tiny_tokenizer):
    from tests.conftest import CHATML

    f = tmp_path / "t.jinja"
    f.write_text(CHATML)
    t = resolve_template(tiny_tokenizer, str(f))
    assert t.source == CHATML and t.name == str(f)
    with pytest.raises(ValueError, match="expected auto, chat, alpaca"):
        resolve_template(tiny_tokenizer, "nope")
