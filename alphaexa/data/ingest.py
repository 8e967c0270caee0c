"""Ingestion: documents from text/JSONL/tar inputs -> tokenizer -> packed train/val token shards.

``tokenize_corpus`` builds the whole dataset in a staging directory next to the
output and renames it into place only when complete, so an interrupted or failed
run never leaves a half-written index, and re-running over an existing dataset
replaces it atomically.  ``ensure_demo_dataset`` builds the built-in demo corpus
once into a cache and reuses it while it verifies.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from topology.modelcfg import ConfigError

from ..errors import UserError
from .demo_corpus import demo_corpus_name, demo_corpus_sha256, write_demo_corpus
from .progress import Progress
from .shards import (
    INDEX_FILE,
    INDEX_FORMAT,
    INDEX_VERSION,
    TOKENIZER_DIR,
    PackedTokens,
    ShardWriter,
    content_sha256,
)
from .sources import Source, discover_sources, read_documents
from .tokenizer import (
    ByteTokenizer,
    Tokenizer,
    check_sentencepiece_settings,
    load_tokenizer,
    token_dtype,
    train_sentencepiece,
)

DEFAULT_SHARD_TOKENS = 1 << 27  # 256 MiB of uint16 per shard
_ENCODE_BATCH_BYTES = 4 << 20  # text handed to the tokenizer at once


def tokenize_corpus(inputs: list[str | Path], out_dir: str | Path, tokenizer: str | Path | Tokenizer = "byte",
                    vocab_size: int | None = None, model_type: str = "bpe", val_fraction: float = 0.01,
                    seed: int = 0, text_unit: str = "file", text_field: str = "text",
                    shard_tokens: int = DEFAULT_SHARD_TOKENS, sentence_sample: int = 2_000_000,
                    progress: bool = True, metadata: dict | None = None) -> PackedTokens:
    """Tokenize ``inputs`` into the dataset directory ``out_dir`` and return it opened.

    ``tokenizer``: ``"byte"``; ``"sentencepiece"`` (train a ``model_type`` model of ``vocab_size``
    ids on the inputs first); a saved tokenizer directory or ``.model`` file; or a Tokenizer.
    Each document goes to ``val`` when a keyed hash of its text falls below ``val_fraction``, so
    a document (and every duplicate of it) lands in the same split whatever the input order.
    """
    out_dir = Path(out_dir)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction}: must be in [0, 1)")
    if shard_tokens < 1:
        raise ConfigError(f"shard_tokens={shard_tokens}: must be >= 1")
    sources = discover_sources(inputs)
    _check_output_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh_dir(out_dir, "tmp")
    try:
        tok = _prepare_tokenizer(tokenizer, vocab_size, model_type, sources, text_unit, text_field, seed,
                                 sentence_sample, progress)
        tok.save(staging / TOKENIZER_DIR)
        index = _write_shards(staging, sources, tok, val_fraction, seed, text_unit, text_field, shard_tokens,
                              progress)
        index["metadata"] = metadata or {}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PackedTokens(out_dir)


def _check_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).is_file():
        raise UserError(f"output directory {out_dir} is not empty and holds no tokenized dataset; "
                        f"refusing to replace it (choose an empty or new directory)")


def _fresh_dir(out_dir: Path, kind: str) -> Path:
    """A new sibling of ``out_dir`` (same file system, so renames are atomic).  Made with os.mkdir
    rather than tempfile.mkdtemp, whose 0700 mode would hide the dataset from a project group."""
    path = out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(path)
    return path


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory in: a reader finds the old dataset, the new one, or for an
    instant none, never a mix of the two."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    retired = _fresh_dir(out_dir, "old")
    os.rename(out_dir, retired / "dataset")
    os.rename(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _iter_documents(sources: list[Source], text_unit: str, text_field: str) -> Iterator[tuple[int, str, int]]:
    """``(source number, text, bytes of that source read so far)`` for every document."""
    for n, source in enumerate(sources):
        for text, consumed in read_documents(source, text_unit, text_field):
            yield n, text, consumed


def _prepare_tokenizer(spec, vocab_size, model_type, sources, text_unit, text_field, seed, sentence_sample,
                       progress) -> Tokenizer:
    if isinstance(spec, Tokenizer):
        tok = spec
    elif str(spec) == "sentencepiece":
        if vocab_size is None:
            raise UserError("--vocab-size is required to train a SentencePiece tokenizer")
        check_sentencepiece_settings(vocab_size, model_type, sentence_sample)
        if progress:
            print(f"training a SentencePiece {model_type} tokenizer with {vocab_size} ids "
                  f"on a sample of up to {sentence_sample} lines ...", file=sys.stderr, flush=True)
        documents = (text for _, text, _ in _iter_documents(sources, text_unit, text_field))
        return train_sentencepiece(documents, vocab_size, model_type, sentence_sample=sentence_sample, seed=seed)
    else:
        tok = load_tokenizer(spec)
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise ConfigError(f"vocab_size={vocab_size} does not match the {tok.kind} tokenizer's "
                          f"{tok.vocab_size} ids" + (" (fixed)" if isinstance(tok, ByteTokenizer) else ""))
    return tok


class _SplitRouter:
    """Sends each encoded document to its split's writer, holding the latest one back so that, when
    the hash gave one split no document at all, that document can fill it instead (both splits
    then exist whenever there are two or more documents)."""

    def __init__(self, writers: dict[str, ShardWriter], val_fraction: float):
        self.writers = writers
        self.val_fraction = val_fraction
        self.count = {"train": 0, "val": 0}
        self.tokens = {"train": 0, "val": 0}
        self._pending: tuple[str, np.ndarray] | None = None

    def add(self, split: str, tokens: np.ndarray) -> None:
        if self._pending is not None:
            self._write(*self._pending)
        self._pending = (split, tokens)

    def finish(self) -> None:
        if self._pending is None:
            raise UserError("the inputs hold no text: every document is empty")
        split, tokens = self._pending
        if self.val_fraction > 0 and self.count["train"] + self.count["val"] == 0:
            raise UserError("cannot hold out a validation split from a single document: split the text into "
                            "more documents (--text-unit paragraph or line) or use --val-fraction 0")
        if self.val_fraction > 0 and self.count["val"] == 0:
            split = "val"
        elif self.count["train"] == 0:
            split = "train"
        self._write(split, tokens)

    def _write(self, split: str, tokens: np.ndarray) -> None:
        self.writers[split].add(tokens)
        self.count[split] += 1
        self.tokens[split] += len(tokens)


def assign_split(text: str, val_fraction: float, seed: int) -> str:
    """``val`` for a fixed, seeded ``val_fraction`` of all possible texts, decided by the text alone."""
    if val_fraction <= 0:
        return "train"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return "val" if int.from_bytes(digest.digest(), "little") < val_fraction * 2.0**64 else "train"


def _write_shards(staging: Path, sources: list[Source], tok: Tokenizer, val_fraction: float, seed: int,
                  text_unit: str, text_field: str, shard_tokens: int, show_progress: bool) -> dict:
    dtype = token_dtype(tok.vocab_size)
    writers = {split: ShardWriter(staging, split, dtype, shard_tokens) for split in ("train", "val")}
    router = _SplitRouter(writers, val_fraction)
    eos = np.asarray([tok.eos_id], dtype=np.int64)
    sizes = [s.size for s in sources]
    done_before = np.concatenate([[0], np.cumsum(sizes)])
    bar = Progress(int(done_before[-1]), "tokenize", enabled=show_progress)
    per_source = [{"path": str(s.path), "format": s.fmt, "bytes": size, "documents": 0}
                  for s, size in zip(sources, sizes)]
    skipped = 0
    batch: list[tuple[int, str]] = []
    batch_bytes = 0
    position = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        encoded = tok.encode_batch([text for _, text in batch])
        for (source_no, text), ids in zip(batch, encoded):
            router.add(assign_split(text, val_fraction, seed), np.concatenate([ids, eos]))
            per_source[source_no]["documents"] += 1
        batch, batch_bytes = [], 0
        bar.update(position, sum(router.count.values()), sum(router.tokens.values()))

    for source_no, text, consumed in _iter_documents(sources, text_unit, text_field):
        position = int(done_before[source_no]) + min(consumed, sizes[source_no])
        if not text.strip():
            skipped += 1
            continue
        batch.append((source_no, text))
        batch_bytes += len(text)
        if batch_bytes >= _ENCODE_BATCH_BYTES:
            flush()
    position = int(done_before[-1])
    if batch:
        flush()
    router.finish()
    bar.update(position, sum(router.count.values()), sum(router.tokens.values()))
    bar.close()
    splits = {}
    for split, writer in writers.items():
        shards = [s.to_json() for s in writer.finish()]
        splits[split] = {"tokens": router.tokens[split], "documents": router.count[split], "shards": shards}
    tokenizer_info = tok.describe()
    return {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "dtype": dtype.name, "eos_id": tok.eos_id,
        "tokenizer": tokenizer_info, "tokenizer_dir": TOKENIZER_DIR,
        "split_rule": {"val_fraction": val_fraction, "seed": seed, "hash": "blake2b-64(text, key=seed)"},
        "text_unit": text_unit, "text_field": text_field, "skipped_empty_documents": skipped,
        "sources": per_source, "splits": splits,
        "content_sha256": content_sha256(dtype.name, tokenizer_info, splits),
    }


def default_cache_dir() -> Path:
    if os.environ.get("ALPHAEXA_DATA_CACHE"):
        return Path(os.environ["ALPHAEXA_DATA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alphaexa" / "data"


@contextmanager
def exclusive_lock(lock_path: Path):
    """One process builds, the others (e.g. the other ranks of a job) wait and then reuse its result."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_dataset(cache_dir: str | Path | None = None, tokenizer: str = "sentencepiece",
                        vocab_size: int | None = 2048, model_type: str = "bpe", val_fraction: float = 0.1,
                        seed: int = 0, progress: bool = False) -> Path:
    """The built-in demo corpus (Python's documentation) tokenized, built once per setting.

    Returns the dataset directory under ``cache_dir`` (default ``$ALPHAEXA_DATA_CACHE`` or
    ``~/.cache/alphaexa/data``).  An existing copy is reused when its checksums verify and it was
    made from this Python's corpus; otherwise it is rebuilt.  Safe to call from every rank at once.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if tokenizer == "byte":
        vocab_size = None
        tok_name = "byte"
    elif tokenizer == "sentencepiece":
        tok_name = f"sp{model_type}{vocab_size}"
    else:
        raise ConfigError(f"demo tokenizer {tokenizer!r}: must be 'byte' or 'sentencepiece'")
    corpus = demo_corpus_name()
    out_dir = cache_dir / f"{corpus}-{tok_name}-val{val_fraction:g}-seed{seed}"
    identity = demo_metadata()
    with exclusive_lock(cache_dir / f".{out_dir.name}.lock"):
        if _is_valid_build(out_dir, identity):
            return out_dir
        files = write_demo_corpus(cache_dir / "corpus" / corpus)
        tokenize_corpus(files, out_dir, tokenizer=tokenizer, vocab_size=vocab_size, model_type=model_type,
                        val_fraction=val_fraction, seed=seed, progress=progress, metadata=identity)
    return out_dir


# The demo corpus (~470 KB) supports BPE vocabularies up to ~15k; 8192 keeps a useful number of
# merges per id.  Models with larger embeddings train on it with the extra rows unused.
DEMO_MAX_SENTENCEPIECE_VOCAB = 8192


def demo_dataset_for_model(model_cfg, cache_dir: str | Path | None = None, seed: int = 0,
                           progress: bool = False) -> Path:
    """``ensure_demo_dataset`` with the tokenizer a ModelConfig asks for: bytes for ``tokenizer="byte"``,
    else SentencePiece BPE with ``min(vocab_size, 8192)`` ids (the model's vocabulary may exceed the
    tokenizer's, never the reverse)."""
    if model_cfg.tokenizer == "byte":
        return ensure_demo_dataset(cache_dir, tokenizer="byte", seed=seed, progress=progress)
    vocab_size = min(model_cfg.vocab_size, DEMO_MAX_SENTENCEPIECE_VOCAB)
    return ensure_demo_dataset(cache_dir, tokenizer="sentencepiece", vocab_size=vocab_size, seed=seed,
                               progress=progress)


def demo_metadata() -> dict:
    """What ``index.json``'s ``metadata`` records for a dataset made from the demo corpus."""
    return {"demo_corpus": demo_corpus_name(), "corpus_sha256": demo_corpus_sha256()}


def _is_valid_build(out_dir: Path, identity: dict) -> bool:
    if not (out_dir / INDEX_FILE).is_file():
        return False
    try:
        dataset = PackedTokens(out_dir, verify=True)
        dataset.load_tokenizer()
    except (UserError, KeyError, ValueError, OSError):
        return False
    return dataset.index.get("metadata") == identity
