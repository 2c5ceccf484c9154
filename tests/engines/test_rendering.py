from guard.engines.rendering import IncrementalDecoder, StopMatcher, render_chat


def test_spans_cover_each_message_content(local_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est née Beyoncé ? 東京"},
                {"role": "assistant", "content": "In Houston."}, {"role": "user", "content": "And her sister?"}]
    rendered = render_chat(local_engine.tokenizer, messages)
    assert [s.role for s in rendered.spans] == ["system", "user", "assistant", "user"]
    for span, message in zip(rendered.spans, messages):
        assert rendered.text[span.char_start:span.char_end] == message["content"]
        decoded = local_engine.tokenizer.decode(rendered.token_ids[span.token_start:span.token_end])
        assert decoded.strip() == message["content"]
    assert rendered.token_ids == local_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def test_stop_matcher_holds_back_partial_stops():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc "
    assert m.feed("N") == ""
    assert m.feed("X") == "ENX"
    assert m.feed("yy EN") == "yy "
    assert m.feed("D and more") == "" and m.stopped
    assert m.flush() == ""


def test_stop_matcher_earliest_of_several():
    m = StopMatcher(["cd", "b"])
    assert m.feed("abcd") == "a" and m.stopped


def test_incremental_decoder_waits_for_complete_characters(local_engine):
    tok = local_engine.tokenizer
    ids = tok("東京 é", add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(tok)
    out = "".join(dec.push([i]) for i in ids)
    assert out == "東京 é"
