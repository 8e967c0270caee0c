"""Tokenizers: a byte-level one that needs no training, and SentencePiece (BPE or unigram).

Both share one small interface (``Tokenizer``): ``encode``/``decode``, ``vocab_size``,
``eos_id``/``bos_id``, ``save(dir)`` and ``load_tokenizer(spec_or_dir)``.  A saved
tokenizer is a directory holding ``tokenizer.json`` (kind and ids) and, for
SentencePiece, the ``spm.model`` file it names.

Choices that make a trained SentencePiece model lossless and reproducible:
byte fallback (any text round-trips, unseen characters become byte pieces), the
identity normaliser with whitespace kept verbatim (``decode(encode(t)) == t``),
no dummy prefix (training lines and encoded documents then see words after a
newline the same way), newline as one symbol, whitespace-only pieces allowed
(indentation), and a deterministic sentence sample with a fixed thread count
(SentencePiece's result depends on the number of training threads).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from topology.modelcfg import ConfigError

from ..errors import UserError

TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_MODEL_FILE = "spm.model"
SENTENCEPIECE_MODEL_TYPES = ("bpe", "unigram")
# Fixed rather than os.cpu_count(): SentencePiece's model depends on the thread
# count, and the same corpus must give the same model on every machine.
SENTENCEPIECE_TRAIN_THREADS = 4
# The piece SentencePiece uses for a space; a literal one in the text is encoded
# as its UTF-8 bytes so that it does not come back as a space.
_SPACE_MARK = "\u2581"
_REPLACEMENT = "\ufffd"


class Tokenizer:
    """What the data pipeline, trainer and generator need from a tokenizer."""

    kind: str
    vocab_size: int
    eos_id: int
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Encode several documents; each result is an int64 array (faster than ``encode`` in a loop)."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        raise NotImplementedError

    def describe(self) -> dict:
        """The identity recorded in dataset indexes and checkpoints (kind, sizes, ids, model checksum)."""
        raise NotImplementedError

    def check_fits(self, model_vocab_size: int) -> None:
        """Raise a one-line ConfigError when a model's embedding cannot hold every id of this tokenizer."""
        check_vocab_fits(self.vocab_size, model_vocab_size, self.kind)


def check_vocab_fits(tokenizer_vocab_size: int, model_vocab_size: int, kind: str = "tokenizer") -> None:
    """A model may have more embedding rows than the tokenizer has ids (padding), never fewer."""
    if model_vocab_size < tokenizer_vocab_size:
        raise ConfigError(f"model.vocab_size={model_vocab_size} is smaller than the {kind} tokenizer's "
                          f"{tokenizer_vocab_size} ids; set model.vocab_size >= {tokenizer_vocab_size}")


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255; nothing to train or store.

    The vocabulary stays at 256 (XenArc's byte models, the ``debug`` preset): EOS
    is 0xFF and BOS 0xFE, two byte values that never occur in UTF-8, so they are
    unambiguous document markers for any text while costing no extra id.
    """

    kind = "byte"
    vocab_size = 256
    eos_id = 0xFF
    bos_id = 0xFE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Markers (EOS/BOS) are dropped; ids outside 0..255 (a model with a padded vocabulary
        can sample them) and invalid UTF-8 become U+FFFD."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i in (self.eos_id, self.bos_id):
                continue
            out += bytes((i,)) if 0 <= i < 256 else _REPLACEMENT.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / TOKENIZER_FILE, self.describe())
        return directory

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "bos_id": self.bos_id}


class SentencePieceTokenizer(Tokenizer):
    """A trained SentencePiece model (``train_sentencepiece`` makes one)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, train_settings: dict | None = None):
        import sentencepiece

        self._proto = bytes(model_proto)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=self._proto)
        self.vocab_size = int(self._sp.get_piece_size())
        self.eos_id = int(self._sp.eos_id())
        self.bos_id = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else None
        self.train_settings = dict(train_settings or {})
        self._space_mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode("utf-8")]
        if self._sp.unk_id() in self._space_mark_ids:
            raise UserError("SentencePiece model was trained without byte_fallback; "
                            "retrain it with `alphaexa tokenize` (byte fallback makes any text round-trip)")

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"SentencePiece model {path} does not exist")
        settings_file = path.parent / TOKENIZER_FILE
        settings = json.loads(settings_file.read_text()).get("train_settings", {}) if settings_file.is_file() else {}
        return cls(path.read_bytes(), settings)

    def __reduce__(self):  # the C++ processor does not pickle; the model bytes do
        return (SentencePieceTokenizer, (self._proto, self.train_settings))

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0].tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if not any(_SPACE_MARK in t for t in texts):
            # Unlike training, encoding gives the same ids with any thread count: use every core.
            return [np.asarray(ids, dtype=np.int64) for ids in self._sp.encode(texts, num_threads=os.cpu_count() or 1)]
        return [np.asarray(self._encode_keeping_space_marks(t), dtype=np.int64) for t in texts]

    def _encode_keeping_space_marks(self, text: str) -> list[int]:
        ids: list[int] = []
        for n, part in enumerate(text.split(_SPACE_MARK)):
            if n:
                ids.extend(self._space_mark_ids)
            ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Control ids (EOS/BOS) are dropped; ids outside the vocabulary become U+FFFD."""
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            pieces.append(self._sp.decode(run))
            pieces.append(_REPLACEMENT)
            run = []
        pieces.append(self._sp.decode(run))
        return "".join(pieces)

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SENTENCEPIECE_MODEL_FILE).write_bytes(self._proto)
        _write_json(directory / TOKENIZER_FILE, {**self.describe(), "model_file": SENTENCEPIECE_MODEL_FILE,
                                                 "train_settings": self.train_settings})
        return directory

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "bos_id": self.bos_id,
                "model_sha256": self.model_sha256}


def train_sentencepiece(documents: Iterable[str], vocab_size: int, model_type: str = "bpe",
                        sentence_sample: int = 2_000_000, seed: int = 0,
                        character_coverage: float = 0.9995) -> SentencePieceTokenizer:
    """Train a byte-fallback SentencePiece model in-process on ``documents``.

    The documents' non-empty lines are the training sentences; when there are
    more than ``sentence_sample``, a seeded uniform sample of them is used
    (reservoir sampling: one pass, bounded memory, the same sample every time).
    """
    import sentencepiece

    check_sentencepiece_settings(vocab_size, model_type, sentence_sample)
    sentences, seen = _sample_lines(documents, sentence_sample, seed)
    if not sentences:
        raise UserError("cannot train a SentencePiece model: the corpus has no non-empty lines")
    settings = {"model_type": model_type, "vocab_size": vocab_size, "character_coverage": character_coverage,
                "sentence_sample": sentence_sample, "seed": seed, "sentences_seen": seen,
                "sentences_used": len(sentences), "num_threads": SENTENCEPIECE_TRAIN_THREADS}
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True, user_defined_symbols=["\n"],
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, shuffle_input_sentence=False,
            input_sentence_size=0, num_threads=SENTENCEPIECE_TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
        # e.g. "Vocabulary size too high (8192). Please set it to a value <= 5000." on a small corpus
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        reason = reason.rsplit("] ", 1)[-1]  # drop SentencePiece's "INTERNAL: file.cc(744) [check]" prefix
        raise UserError(f"SentencePiece {model_type} training with vocab_size={vocab_size} failed "
                        f"on {len(sentences)} sentences: {reason}") from None
    return SentencePieceTokenizer(model.getvalue(), settings)


def check_sentencepiece_settings(vocab_size: int, model_type: str, sentence_sample: int = 1) -> None:
    """The one-line errors ``train_sentencepiece`` would raise, before any text is read."""
    if model_type not in SENTENCEPIECE_MODEL_TYPES:
        raise ConfigError(f"model_type={model_type!r}: must be one of {', '.join(SENTENCEPIECE_MODEL_TYPES)}")
    # 3 control ids (unk, bos, eos) + newline + 256 byte pieces come before any learned piece.
    reserved = 3 + 1 + 256
    if vocab_size <= reserved:
        raise ConfigError(f"vocab_size={vocab_size} is too small for a byte-fallback SentencePiece model: "
                          f"{reserved} ids are reserved (3 control, newline, 256 bytes); use > {reserved}")
    if sentence_sample < 1:
        raise ConfigError(f"sentence_sample={sentence_sample}: must be >= 1")


def _sample_lines(documents: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """Reservoir sample (Algorithm R) of the non-empty lines; returns the sample in corpus order and
    the number of lines seen, so the result does not depend on anything but the corpus and seed."""
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[int, str]] = []
    seen = 0
    for doc in documents:
        for line in doc.split("\n"):
            if not line.strip():
                continue
            if seen < k:
                reservoir.append((seen, line))
            else:
                j = int(rng.integers(0, seen + 1))
                if j < k:
                    reservoir[j] = (seen, line)
            seen += 1
    reservoir.sort()
    return [line for _, line in reservoir], seen


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """``"byte"``, a directory saved by ``Tokenizer.save`` (or a tokenized dataset directory, whose
    tokenizer is in ``tokenizer/``), or a SentencePiece ``.model`` file."""
    if str(spec) == "byte":
        return ByteTokenizer()
    if str(spec) == "sentencepiece":
        raise UserError("a SentencePiece tokenizer must be trained first: give the directory that "
                        "`alphaexa tokenize --tokenizer sentencepiece` wrote, or a .model file")
    path = Path(spec)
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)
    if (path / "tokenizer" / TOKENIZER_FILE).is_file():
        path = path / "tokenizer"
    settings_file = path / TOKENIZER_FILE
    if not settings_file.is_file():
        raise UserError(f"no tokenizer at {path}: expected 'byte', a .model file or a directory with {TOKENIZER_FILE}")
    try:
        settings = json.loads(settings_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{settings_file} is not valid JSON: {e}") from None
    kind = settings.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        tokenizer = SentencePieceTokenizer.from_file(path / settings.get("model_file", SENTENCEPIECE_MODEL_FILE))
        expected = settings.get("model_sha256")
        if expected and expected != tokenizer.model_sha256:
            raise UserError(f"{path / SENTENCEPIECE_MODEL_FILE} does not match the checksum in {settings_file}")
        return tokenizer
    raise UserError(f"{settings_file}: unknown tokenizer kind {kind!r}")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (uint8 for the byte tokenizer)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ConfigError(f"vocab_size={vocab_size} does not fit 32-bit token ids")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
