"""Packed token shards on disk: the writer used by ingestion and the memory-mapped reader.

A dataset directory holds, per split (``train``, ``val``), flat ``.bin`` files of
token ids (``uint16``, or ``uint32`` past 65536 ids) in which every document is
followed by the tokenizer's EOS id, a ``.docs.npy`` file per shard with the
documents' end offsets, the tokenizer in ``tokenizer/``, and ``index.json``
describing it all with sha256 checksums (schema: docs/data.md).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

INDEX_FILE = "index.json"
INDEX_FORMAT = "alphaexa.packed_tokens"
INDEX_VERSION = 1
SPLITS = ("train", "val")
TOKENIZER_DIR = "tokenizer"
MAX_MAPPED_SHARDS = 128


@dataclass
class ShardRecord:
    file: str
    tokens: int
    documents: int
    sha256: str
    doc_ends_file: str
    doc_ends_sha256: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ShardWriter:
    """Appends documents to ``{split}-NNNNN.bin`` files, starting a new shard once one holds
    ``shard_tokens`` tokens (a document is never cut across shards)."""

    directory: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    shards: list[ShardRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._fh = None
        self._digest = None
        self._tokens = 0
        self._doc_ends: list[int] = []

    def add(self, tokens: np.ndarray) -> None:
        if self._fh is None:
            name = f"{self.split}-{len(self.shards):05d}.bin"
            self._fh = open(self.directory / name, "wb")  # noqa: SIM115 - open across add() calls
            self._digest = hashlib.sha256()
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self._fh.write(data)
        self._digest.update(data)
        self._tokens += len(tokens)
        self._doc_ends.append(self._tokens)
        if self._tokens >= self.shard_tokens:
            self._close_shard()

    def finish(self) -> list[ShardRecord]:
        if self._fh is not None:
            self._close_shard()
        return self.shards

    def _close_shard(self) -> None:
        name = Path(self._fh.name).name
        self._fh.close()
        ends_name = name.replace(".bin", ".docs.npy")
        np.save(self.directory / ends_name, np.asarray(self._doc_ends, dtype=np.int64))
        self.shards.append(ShardRecord(name, self._tokens, len(self._doc_ends), self._digest.hexdigest(),
                                       ends_name, file_sha256(self.directory / ends_name)))
        self._fh, self._digest, self._tokens, self._doc_ends = None, None, 0, []


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(dtype: str, tokenizer: dict, splits: dict) -> str:
    """Identity of a dataset's tokens: dtype, tokenizer and shard checksums, but not where its
    sources lay, so the same corpus ingested on two machines has the same identity."""
    material = {"dtype": dtype, "tokenizer": tokenizer,
                "splits": {name: [s["sha256"] for s in split["shards"]] for name, split in splits.items()}}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class SplitTokens:
    """One split's shards as a single read-only token stream (memory-mapped, shards concatenated)."""

    def __init__(self, directory: Path, name: str, record: dict, dtype: np.dtype):
        self.name = name
        self.documents = int(record["documents"])
        self._records = record["shards"]
        self._directory = directory
        self._dtype = dtype
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()
        self._starts = np.cumsum([0] + [s["tokens"] for s in self._records])
        self.num_tokens = int(self._starts[-1])

    def _map(self, shard: int) -> np.memmap:
        """Shards are mapped on first use and at most MAX_MAPPED_SHARDS stay mapped (least recently
        used first out): each mapping holds a file descriptor, and a corpus of trillions of tokens has
        more shards than a process may open files."""
        if shard in self._maps:
            self._maps.move_to_end(shard)
        else:
            self._maps[shard] = np.memmap(self._directory / self._records[shard]["file"], dtype=self._dtype, mode="r")
            if len(self._maps) > MAX_MAPPED_SHARDS:
                self._maps.popitem(last=False)
        return self._maps[shard]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream as int64 (a copy, safe to hand to torch)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside the {self.name} split's {self.num_tokens}")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            take = min(length - filled, int(self._records[shard]["tokens"]) - offset)
            out[filled:filled + take] = self._map(shard)[offset:offset + take]
            filled += take
            shard += 1
        return out

    def document_ends(self) -> np.ndarray:
        """End offset (exclusive, after the EOS) of every document in stream coordinates."""
        parts = [np.load(self._directory / s["doc_ends_file"]) + start
                 for s, start in zip(self._records, self._starts[:-1])]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class PackedTokens:
    """A tokenized dataset directory, opened read-only.

    ``PackedTokens(dir)`` checks the index and that every file has its recorded size (cheap);
    ``verify=True`` also recomputes every sha256 (reads all data once).
    """

    def __init__(self, directory: str | Path, verify: bool = False):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise UserError(f"{self.directory} is not a tokenized dataset (no {INDEX_FILE}); "
                            f"create one with `alphaexa tokenize`")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{index_path} is not valid JSON: {e}") from None
        if self.index.get("format") != INDEX_FORMAT or self.index.get("version") != INDEX_VERSION:
            raise UserError(f"{index_path}: not an {INDEX_FORMAT} v{INDEX_VERSION} index")
        self.dtype = np.dtype(self.index["dtype"])
        self.eos_id = int(self.index["eos_id"])
        self.vocab_size = int(self.index["tokenizer"]["vocab_size"])
        self.fingerprint = self.index["content_sha256"]
        self._check_files(verify)
        self._splits: dict[str, SplitTokens] = {}

    def _check_files(self, verify: bool) -> None:
        recorded = content_sha256(self.index["dtype"], self.index["tokenizer"], self.index["splits"])
        if recorded != self.fingerprint:
            raise UserError(f"{self.directory / INDEX_FILE}: content_sha256 does not match its shard list (edited index?)")
        for split in self.index["splits"].values():
            for shard in split["shards"]:
                path = self.directory / shard["file"]
                expected = shard["tokens"] * self.dtype.itemsize
                if not path.is_file() or path.stat().st_size != expected:
                    size = path.stat().st_size if path.is_file() else "missing"
                    raise UserError(f"{path}: size {size}, index says {expected} bytes (truncated or replaced shard)")
                if verify:
                    for name, key in ((shard["file"], "sha256"), (shard["doc_ends_file"], "doc_ends_sha256")):
                        if file_sha256(self.directory / name) != shard[key]:
                            raise UserError(f"{self.directory / name}: sha256 does not match {INDEX_FILE} "
                                            f"(the file was modified or corrupted)")

    def split(self, name: str) -> SplitTokens:
        if name not in self.index["splits"]:
            raise UserError(f"{self.directory} has no {name!r} split (has: {', '.join(self.index['splits'])})")
        if name not in self._splits:
            self._splits[name] = SplitTokens(self.directory, name, self.index["splits"][name], self.dtype)
        return self._splits[name]

    def load_tokenizer(self):
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.directory / TOKENIZER_DIR)
        if tokenizer.describe() != self.index["tokenizer"]:
            raise UserError(f"{self.directory / TOKENIZER_DIR} is not the tokenizer this dataset was made with")
        return tokenizer
