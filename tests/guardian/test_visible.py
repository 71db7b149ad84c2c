"""`visible`: the part of a conversation the student reads, which the teacher is trained on and scores."""

from __future__ import annotations

import numpy as np

from export.bundle import minilm_tokenizer_json
from feddetox.data.records import Conversation
from feddetox.guardian.text import encode, load_tokenizer, visible


def _tok(max_length: int = 24):
    return load_tokenizer(minilm_tokenizer_json(), max_length=max_length)


def test_a_long_conversation_is_cut_where_the_student_cuts_it() -> None:
    tok = _tok()
    long = Conversation(
        "How Do I Plan a Road Trip along the West Coast, starting near San Diego, with stops for food?",
        "Day 1: Drive from San Diego to Joshua Tree. Day 2: Explore the park. Day 3: Drive to Las Vegas.",
        label=0,
    )
    (view,) = visible(tok, [long])
    assert view.label == 0
    assert long.prompt.startswith(view.prompt) and long.response.startswith(view.response)
    assert view.prompt != long.prompt and view.response != long.response  # both are cut, longest first
    assert view.prompt.startswith("How Do I Plan")  # the original text, case kept (the tokenizer lowercases)
    # the student reads the view exactly as it reads the whole conversation, and reads all of it
    whole, cut = encode(tok, [long]), encode(tok, [view])
    assert np.array_equal(whole.input_ids, cut.input_ids)
    assert np.array_equal(whole.token_type_ids, cut.token_type_ids)
    wide = load_tokenizer(minilm_tokenizer_json(), max_length=512)
    assert np.array_equal(encode(wide, [view]).input_ids, cut.input_ids)


def test_a_conversation_read_whole_comes_back_as_it_is() -> None:
    tok = _tok()
    short = Conversation("Is it safe to eat raw eggs?", "Mostly, if they are pasteurised.", label=0)
    text = Conversation("a tweet that is short enough", "", label=1)
    out = visible(tok, [short, text])
    assert out[0] is short and out[1] is text


def test_a_text_alone_is_cut_to_its_kept_tokens() -> None:
    tok = _tok(max_length=8)
    text = Conversation("one two three four five six seven eight nine ten", "", label=1)
    (view,) = visible(tok, [text])
    assert view.prompt == "one two three four five six" and view.response == ""  # 6 words + [CLS] + [SEP]
