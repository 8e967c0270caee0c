"""Reading documents from plain text, JSONL and WebDataset-style tar shards.

Every reader yields ``(text, consumed)`` pairs: a document and how many bytes of
its input file have been read so far (for the progress bar).  Files are decoded
as UTF-8; undecodable bytes become U+FFFD rather than aborting a long ingestion.
"""
from __future__ import annotations

import gzip
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TEXT_UNITS = ("file", "paragraph", "line")
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Source:
    path: Path
    fmt: str  # "text" | "jsonl" | "tar"

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if name.endswith(_TEXT_SUFFIXES):
        return "text"
    return None


def discover_sources(inputs: list[str | Path]) -> list[Source]:
    """Expand the inputs: a file is read as its suffix says (plain text when it has no known suffix);
    a directory contributes its ``.txt/.md/.rst/.jsonl/.tar`` files, recursively, in sorted order."""
    if not inputs:
        raise UserError("no input given: pass text, JSONL or tar files (or directories) with --input")
    sources: list[Source] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = [Source(p, fmt) for p in sorted(path.rglob("*"))
                     if p.is_file() and (fmt := _format_of(p)) is not None]
            if not found:
                raise UserError(f"input directory {path} contains no .txt, .md, .rst, .jsonl or .tar files")
            sources.extend(found)
        elif path.is_file():
            sources.append(Source(path, _format_of(path) or "text"))
        else:
            raise UserError(f"input {path} does not exist")
    return sources


def read_documents(source: Source, text_unit: str = "file", text_field: str = "text") -> Iterator[tuple[str, int]]:
    if source.fmt == "jsonl":
        return _read_jsonl(source.path, text_field)
    if source.fmt == "tar":
        return _read_tar(source.path, text_field)
    if text_unit not in TEXT_UNITS:
        raise UserError(f"text unit {text_unit!r}: must be one of {', '.join(TEXT_UNITS)}")
    return _read_text(source.path, text_unit)


def _read_text(path: Path, unit: str) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as fh:
        if unit == "file":
            data = fh.read()
            yield data.decode("utf-8", errors="replace"), len(data)
            return
        consumed = 0
        paragraph: list[str] = []
        for raw_line in fh:
            consumed += len(raw_line)
            line = raw_line.decode("utf-8", errors="replace")
            if unit == "line":
                text = line.rstrip("\r\n")
                if text:
                    yield text, consumed
            elif line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph).rstrip("\r\n"), consumed
                paragraph = []
        if paragraph:
            yield "".join(paragraph).rstrip("\r\n"), consumed


def _read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as raw:
        fh = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            yield _json_text(line, text_field, f"{path}:{lineno}"), raw.tell()


def _json_text(data: bytes, text_field: str, where: str) -> str:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or text_field not in record:
        raise UserError(f"{where}: no {text_field!r} field (choose the field with --text-field)")
    text = record[text_field]
    if not isinstance(text, str):
        raise UserError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


def _read_tar(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """WebDataset layout: consecutive members sharing a key (the name up to the first dot of its
    basename) form one sample; its ``.txt`` member is the document, else the text field of its
    ``.json`` member; samples with neither (images, ...) are skipped."""
    with open(path, "rb") as raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r:*")  # noqa: SIM115 - closed by the with below
        except tarfile.TarError as e:
            raise UserError(f"{path}: not a readable tar archive ({e})") from None
        with archive:
            key, members = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                member_key = f"{directory}/{stem}" if directory else stem
                if member_key != key and members:
                    text = tar_sample_text(members, text_field, f"{path}:{key}")
                    if text is not None:
                        yield text, raw.tell()
                    members = {}
                key = member_key
                if dot and ext.lower() in ("txt", "json"):
                    members[ext.lower()] = archive.extractfile(member).read()
            if members:
                text = tar_sample_text(members, text_field, f"{path}:{key}")
                if text is not None:
                    yield text, raw.tell()


def tar_sample_text(members: dict[str, bytes], text_field: str, where: str) -> str | None:
    """A WebDataset sample's document: its ``txt`` member, else the text field of its ``json`` member."""
    if "txt" in members:
        return members["txt"].decode("utf-8", errors="replace")
    if "json" in members:
        return _json_text(members["json"], text_field, where)
    return None
