"""Byte and SentencePiece tokenizers: lossless round trips, deterministic training, save/load, vocab checks."""
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaexa.data.demo_corpus import demo_corpus_documents
from alphaexa.data.tokenizer import (
    TOKENIZER_FILE,
    ByteTokenizer,
    SentencePieceTokenizer,
    _sample_lines,
    check_vocab_fits,
    load_tokenizer,
    token_dtype,
    train_sentencepiece,
)
from alphaexa.errors import UserError
from topology.modelcfg import ConfigError

# Text SentencePiece never saw in training: other scripts, emoji, control characters, its own
# space mark U+2581, a lone CR, NUL, tabs and runs of spaces.
UNSEEN = "Grüße, 日本語のテキスト 🎉🦀 \u2581marked\u2581 \x00\r\n\tindent    gap ∮ E⋅da = Q, ｆｕｌｌ"


@pytest.fixture(scope="module")
def corpus():
    return [text for _, text in demo_corpus_documents()]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_sentencepiece(corpus, vocab_size=1024, model_type="bpe")


def test_byte_tokenizer_is_utf8_with_markers_outside_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.encode("aé€🎉") == list("aé€🎉".encode())
    # 0xFE/0xFF never occur in UTF-8, so the markers cannot collide with text.
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"
    assert tok.decode([104, 300, 105]) == "h\ufffdi"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip_arbitrary_unicode(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.bos_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode_batch([text])[0].tolist() == ids


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_training_is_deterministic(corpus, model_type):
    first = train_sentencepiece(corpus[:80], vocab_size=768, model_type=model_type)
    second = train_sentencepiece(corpus[:80], vocab_size=768, model_type=model_type)
    assert first._proto == second._proto
    sample = corpus[3] + UNSEEN
    assert first.encode(sample) == second.encode(sample)
    assert first.vocab_size == 768


def test_sentencepiece_compresses_and_round_trips_unseen_text(bpe, corpus):
    text = corpus[10]
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2.5  # learned merges, not bytes
    assert bpe.decode(ids) == text
    assert bpe.decode(bpe.encode(UNSEEN)) == UNSEEN
    assert bpe.encode("\n") == [bpe._sp.piece_to_id("\n")]  # newline is one symbol
    assert all(0 <= i < bpe.vocab_size for i in bpe.encode(UNSEEN))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_sentencepiece_round_trip_arbitrary_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_batch([text, "x"])[0].tolist() == bpe.encode(text)


def test_sentencepiece_decode_drops_controls_and_replaces_out_of_range(bpe):
    ids = bpe.encode("hello world")
    assert bpe.decode([bpe.bos_id, *ids, bpe.eos_id]) == "hello world"
    assert bpe.decode([*ids, bpe.vocab_size + 5, *ids]) == "hello world\ufffdhello world"


def test_sentencepiece_save_load_and_pickle(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    for spec in (tmp_path / "tok", tmp_path / "tok" / "spm.model"):
        loaded = load_tokenizer(spec)
        assert isinstance(loaded, SentencePieceTokenizer)
        assert loaded.encode(UNSEEN) == bpe.encode(UNSEEN)
        assert loaded.describe() == bpe.describe()
    assert load_tokenizer(tmp_path / "tok").train_settings == bpe.train_settings
    assert pickle.loads(pickle.dumps(bpe)).encode(UNSEEN) == bpe.encode(UNSEEN)
    other = train_sentencepiece(["other text, another model\n"] * 50, 280)
    (tmp_path / "tok" / "spm.model").write_bytes(other._proto)
    with pytest.raises(UserError, match="does not match the checksum"):
        load_tokenizer(tmp_path / "tok")


def test_load_tokenizer_specs(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    ByteTokenizer().save(tmp_path / "b")
    assert isinstance(load_tokenizer(tmp_path / "b"), ByteTokenizer)
    with pytest.raises(UserError, match="must be trained first"):
        load_tokenizer("sentencepiece")
    with pytest.raises(UserError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / TOKENIZER_FILE).write_text('{"kind": "wordpiece"}')
    with pytest.raises(UserError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path / "bad")


def test_model_vocab_must_cover_the_tokenizer(bpe):
    check_vocab_fits(256, 256)
    check_vocab_fits(256, 512)  # padded embedding is fine
    with pytest.raises(ConfigError, match=r"model.vocab_size=256 is smaller than the sentencepiece tokenizer's 1024"):
        bpe.check_fits(256)
    ByteTokenizer().check_fits(256)


def test_bad_sentencepiece_settings_are_one_line_errors(corpus):
    with pytest.raises(ConfigError, match="vocab_size=200 is too small"):
        train_sentencepiece(corpus, vocab_size=200)
    with pytest.raises(ConfigError, match="model_type='wordpiece'"):
        train_sentencepiece(corpus, vocab_size=1000, model_type="wordpiece")
    with pytest.raises(UserError, match=r"Vocabulary size too high") as err:
        train_sentencepiece(corpus[:3], vocab_size=20000, model_type="unigram")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no non-empty lines"):
        train_sentencepiece(["", "  \n\n"], vocab_size=1000)


def test_line_sample_is_seeded_uniform_and_in_corpus_order():
    docs = [f"line {i}\n\nline {i}b" for i in range(500)]
    sample, seen = _sample_lines(docs, 100, seed=1)
    assert seen == 1000 and len(sample) == 100
    assert sample == _sample_lines(docs, 100, seed=1)[0]
    assert sample != _sample_lines(docs, 100, seed=2)[0]
    order = [int(s.split()[1].rstrip("b")) for s in sample]
    assert order == sorted(order)
    assert max(order) > 400  # not just the head of the corpus
    assert _sample_lines(docs, 5000, seed=1)[0] == [line for d in docs for line in d.split("\n") if line]


def test_token_dtype_is_the_smallest_that_fits():
    assert [token_dtype(v).name for v in (256, 257, 65536, 65537)] == ["uint8", "uint16", "uint16", "uint32"]
