"""WebDataset shards tokenised while training, in an order that resumes exactly at any dp size.

``data.corpus`` may name shards instead of text to ingest up front: brace patterns
(``shards-{000..099}.tar``), globs and paths of local tar files, ``pipe:`` commands
that write a tar to stdout, or URLs that ``webdataset.gopen`` opens.

The stream (docs/data.md): epoch ``e`` visits the ``K`` shards in a seeded permutation
of them; a shard's documents (WebDataset samples: members sharing a key, text from
``.txt`` or the text field of ``.json``) are split train/val by the same keyed hash as
ingestion, tokenised, joined with EOS and cut into windows of ``seq_len + 1`` tokens
that overlap by one (the shard's last partial window is dropped); its training windows
are visited in a seeded permutation of them.  Position ``p`` of the stream is therefore
fixed by the seed and the shards' contents, independently of ranks and workers.  Where
a position lies -- ``(epoch, ordinal of the shard in that epoch's order, window offset)``
-- is only known once the shards before it are tokenised, so the loader keeps that
bookmark beside ``consumed_samples`` and a resume starts reading at the bookmarked shard.

Why not WebDataset's own pipeline end to end: its shard shuffling and shuffle buffer are
seeded per process and hold no position one could resume from, and its node/worker
splitting makes the sample order depend on the number of ranks and workers.  We take
from it what is independent of that: shard URL expansion (``expand_urls``), opening
(``gopen``), and the tar reader that groups members into samples.

Nothing here imports torch (the worker processes live in ``alphaexa.train.stream_loader``).
"""
from __future__ import annotations

import glob
import hashlib
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ingest import assign_split
from .sampler import IndexPermutation
from .sources import tar_sample_text
from .tokenizer import Tokenizer

# Permutation streams under one seed: the shards' order per epoch, the windows' order per shard visit.
_SHARD_ORDER, _WINDOW_ORDER = 1, 2
# A sample id is shard << 32 | window: which shard of the list and which window of it.
WINDOW_BITS = 32


def is_stream_spec(item: str) -> bool:
    """Entries that only make sense as WebDataset shards: brace patterns, pipe: commands and URLs."""
    return item.startswith("pipe:") or "://" in item or ("{" in item and "}" in item)


def _is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url)


def shard_urls(corpus: list[str]) -> list[str]:
    """Every shard of ``data.corpus`` in order: braces expanded (as WebDataset does), local globs
    matched in sorted order; a local shard that does not exist is a one-line error."""
    from webdataset.shardlists import expand_urls

    urls: list[str] = []
    for item in corpus:
        for url in expand_urls(item):
            if not _is_local(url):
                urls.append(url)
                continue
            matches = sorted(glob.glob(url)) if glob.has_magic(url) else [url] if Path(url).exists() else []
            if not matches:
                where = "" if url == item else f" (from {item})"
                raise UserError(f"data.corpus: no shard matches {url}{where}")
            for match in matches:
                if not Path(match).is_file():
                    raise UserError(f"data.corpus: {match} is not a tar file (streaming reads WebDataset shards)")
            urls.extend(matches)
    if not urls:
        raise UserError("data.corpus: no shards given")
    return urls


@dataclass(frozen=True)
class SplitRule:
    """Which documents are held out: the same keyed hash as ``alphaexa tokenize``."""

    val_fraction: float
    seed: int
    text_field: str = "text"


def _open_pipe(command: str, errors):
    """WebDataset's Pipe (which raises on a non-zero exit when closed) with stderr kept for the message."""
    from webdataset.gopen import Pipe

    return Pipe(command, mode="rb", shell=True, bufsize=1 << 16, ignore_status=[141], stderr=errors)


def _failure(url: str, error: BaseException, stream=None, errors=None) -> UserError:
    """One line: what went wrong with a shard (a command's exit status and last stderr line first)."""
    from webdataset.gopen import Pipe

    lines = str(error.args[0] if error.args else error).splitlines() or [type(error).__name__]
    reason = lines[-1].split(" @ ")[0].strip().removeprefix("- method tar: ")
    if isinstance(error, tarfile.TarError):
        reason = f"not a readable tar archive ({reason})"
    if isinstance(stream, Pipe):
        try:  # the tar ended or broke: the command has exited or is about to
            status = stream.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            stream.proc.kill()
            status = None
        if status is not None and status not in stream.ignore_status:
            reason = f"the command exited with status {status}"
    if errors is not None:
        errors.seek(0)
        said = [line.strip() for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
        if said:
            reason = f"{reason}: {said[-1]}"
    return UserError(f"data.corpus: shard {url}: {reason}")


def shard_documents(url: str, text_field: str = "text") -> Iterator[str]:
    """The documents of one shard, in tar order; a shard that cannot be read (missing, not a tar,
    truncated, a command that fails) is a one-line UserError naming it."""
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    errors = tempfile.TemporaryFile() if url.startswith("pipe:") else None  # noqa: SIM115 - closed in finally
    stream = None
    try:
        stream = _open_pipe(url[len("pipe:"):], errors) if errors is not None else gopen(url)
        files = tar_file_expander([{"url": url, "stream": stream}], eof_value=None)
        for sample in group_by_keys(files):
            text = tar_sample_text(sample, text_field, f"{url}:{sample['__key__']}")
            if text is not None:
                yield text
        stream.close()  # a Pipe raises here when its command failed after writing a valid tar
    except (OSError, ValueError, tarfile.TarError) as e:
        raise _failure(url, e, stream, errors) from None
    finally:
        if errors is not None:
            errors.close()


def tokenize_shard(url: str, tokenizer: Tokenizer, rule: SplitRule) -> dict[str, np.ndarray]:
    """Per split, the shard's documents tokenised, each followed by EOS, packed back to back (int32)."""
    texts: dict[str, list[str]] = {"train": [], "val": []}
    for text in shard_documents(url, rule.text_field):
        if text.strip():
            texts[assign_split(text, rule.val_fraction, rule.seed)].append(text)
    eos = np.asarray([tokenizer.eos_id], dtype=np.int32)
    out = {}
    for split, docs in texts.items():
        parts = [piece for ids in tokenizer.encode_batch(docs) for piece in (np.asarray(ids, dtype=np.int32), eos)]
        out[split] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return out


def window_count(tokens: np.ndarray, seq_len: int) -> int:
    return max(0, (len(tokens) - 1) // seq_len)


def windows(tokens: np.ndarray, seq_len: int, which: np.ndarray) -> np.ndarray:
    """``[len(which), seq_len + 1]`` int64: windows ``which`` of a packed token array."""
    starts = np.asarray(which, dtype=np.int64)[:, None] * seq_len
    return tokens[starts + np.arange(seq_len + 1)].astype(np.int64)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    return IndexPermutation(num_shards, seed, epoch, _SHARD_ORDER)(np.arange(num_shards))


def window_order(num_windows: int, seed: int, epoch: int, shard: int) -> np.ndarray:
    return IndexPermutation(num_windows, seed, epoch, _WINDOW_ORDER, shard)(np.arange(num_windows))


def stream_fingerprint(urls: list[str], tokenizer: Tokenizer, rule: SplitRule) -> str:
    """What a saved stream position belongs to: the shard list, the tokenizer and the split rule."""
    material = {"shards": urls, "tokenizer": tokenizer.describe(), "val_fraction": rule.val_fraction,
                "split_seed": rule.seed, "text_field": rule.text_field}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def probe_shards(urls: list[str], text_field: str = "text") -> None:
    """Cheap checks before anything trains: every local shard's tar headers are walked (no member
    is read, so a truncated or non-tar file is found at once), and the first shard that is a
    command or URL is read through (a command that fails is found before the ranks start)."""
    for url in filter(_is_local, urls):
        try:
            with tarfile.open(url, mode="r:*") as archive:
                members = archive.getmembers()
        except (OSError, tarfile.TarError, EOFError) as e:
            raise _failure(url, e) from None
        if not url.endswith((".gz", ".tgz", ".bz2", ".xz")) and not _has_end_marker(Path(url), members):
            raise UserError(f"data.corpus: shard {url}: truncated (no end-of-archive blocks after "
                            f"{members[-1].name if members else 'the start'})")
    remote = [url for url in urls if not _is_local(url)]
    if remote:
        for _ in shard_documents(remote[0], text_field):
            pass


def _has_end_marker(path: Path, members: list[tarfile.TarInfo]) -> bool:
    """A complete tar ends, after its last member's padded data, with two zero blocks; tarfile reads
    an archive cut at a block boundary (or mid-header) as a shorter one without complaint."""
    block = tarfile.BLOCKSIZE
    end = -(-(members[-1].offset_data + members[-1].size) // block) * block if members else 0
    size = path.stat().st_size
    if size % block or size - end < 2 * block:
        return False
    with open(path, "rb") as fh:
        fh.seek(end)
        return fh.read(2 * block) == bytes(2 * block)


class StreamValidation:
    """The held-out windows of the first shards in list order (no shuffling, every epoch the same):
    read until ``wanted`` windows are found.  Duck-types ``PackedSamples`` for ``validation_batches``."""

    split = "val"

    def __init__(self, urls: list[str], tokenizer: Tokenizer, rule: SplitRule, seq_len: int, wanted: int):
        self.seq_len = seq_len
        found: list[np.ndarray] = []
        have = 0
        for url in urls:
            tokens = tokenize_shard(url, tokenizer, rule)["val"]
            count = min(window_count(tokens, seq_len), wanted - have)
            if count:
                found.append(windows(tokens, seq_len, np.arange(count)))
                have += count
            if have >= wanted:
                break
        self._windows = np.concatenate(found) if found else np.zeros((0, seq_len + 1), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._windows)

    def batch(self, sample_ids: np.ndarray) -> np.ndarray:
        return self._windows[np.asarray(sample_ids, dtype=np.int64)]


def check_stream_tokenizer(spec: str) -> None:
    if spec == "sentencepiece":
        raise UserError("data.tokenizer=sentencepiece would train a tokenizer on the whole corpus, which streaming "
                        "does not read up front: give a trained tokenizer (a directory from `alphaexa tokenize`, "
                        "a .model file) or byte")
    if spec != "byte" and not Path(spec).exists():
        raise UserError(f"data.tokenizer: {spec} does not exist (streaming needs byte or a trained tokenizer)")

