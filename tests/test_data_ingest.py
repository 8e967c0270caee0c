"""Ingestion of text, JSONL and WebDataset tar inputs into packed shards; index checksums; atomic
re-runs; the demo corpus cache; and the ``alphaexa tokenize`` command's one-line errors."""
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from alphaexa.data import (
    PackedTokens,
    demo_dataset_for_model,
    ensure_demo_dataset,
    load_tokenizer,
    tokenize_corpus,
)
from alphaexa.data import shards as shards_module
from alphaexa.data.demo_corpus import demo_corpus_documents, module_docstrings, split_sections
from alphaexa.data.ingest import assign_split
from alphaexa.data.tokenizer import ByteTokenizer
from alphaexa.errors import UserError
from topology.modelcfg import ConfigError

DOCS = ["First document.\nIt has two lines.", "Zweites Dokument: Grüße 🎉", "third\n\nwith a blank line",
        "  leading spaces and\ttabs", "fifth document " * 40, "6", "seventh: 日本語", "eighth\r\nCRLF"]


def _stream(dataset: PackedTokens, split: str) -> list[int]:
    tokens = dataset.split(split)
    return tokens.read(0, tokens.num_tokens).tolist()


def _expected_stream(tokenizer, docs) -> list[int]:
    return [t for d in docs for t in tokenizer.encode(d) + [tokenizer.eos_id]]


def _documents(dataset: PackedTokens, split: str, tokenizer) -> list[str]:
    stream = _stream(dataset, split)
    ends = dataset.split(split).document_ends().tolist()
    starts = [0] + ends[:-1]
    assert all(stream[e - 1] == tokenizer.eos_id for e in ends)
    return [tokenizer.decode(stream[s:e - 1]) for s, e in zip(starts, ends)]


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("unit", ["file", "paragraph", "line"])
def test_text_files_give_exactly_the_directly_tokenized_documents(tmp_path, unit):
    files = []
    for n, doc in enumerate(DOCS[:4]):
        files.append(tmp_path / f"d{n}.txt")
        files[-1].write_bytes(doc.encode())
    dataset = tokenize_corpus(files, tmp_path / "out", val_fraction=0, text_unit=unit, progress=False)
    expected_docs = {"file": DOCS[:4],
                     "paragraph": [p for d in DOCS[:4] for p in d.split("\n\n")],
                     "line": [line.rstrip("\r") for d in DOCS[:4] for line in d.split("\n") if line]}[unit]
    tok = ByteTokenizer()
    assert _stream(dataset, "train") == _expected_stream(tok, expected_docs)
    assert _documents(dataset, "train", tok) == expected_docs
    assert dataset.index["splits"]["train"]["documents"] == len(expected_docs)
    assert dataset.index["splits"]["train"]["tokens"] == len(_expected_stream(tok, expected_docs))
    assert dataset.dtype == np.uint8


def test_jsonl_with_a_chosen_field_and_sentencepiece(tmp_path):
    records = [{"id": n, "body": doc} for n, doc in enumerate(DOCS)]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    corpus = [text for _, text in demo_corpus_documents()[:60]]
    (tmp_path / "tok").mkdir()
    from alphaexa.data.tokenizer import train_sentencepiece
    sp = train_sentencepiece(corpus, vocab_size=600)
    sp.save(tmp_path / "tok")
    dataset = tokenize_corpus([path], tmp_path / "out", tokenizer=tmp_path / "tok", text_field="body",
                              val_fraction=0, progress=False)
    assert _stream(dataset, "train") == _expected_stream(sp, DOCS)
    assert dataset.dtype == np.uint16
    assert dataset.load_tokenizer().describe() == sp.describe()
    path.write_text(json.dumps({"text": "no body"}) + "\n")
    with pytest.raises(UserError, match=r"c.jsonl:1: no 'body' field"):
        tokenize_corpus([path], tmp_path / "out2", text_field="body", progress=False)


def test_webdataset_tar_groups_members_by_key(tmp_path):
    path = tmp_path / "shard-000.tar"
    _write_tar(path, [
        ("s/000.txt", DOCS[0].encode()), ("s/000.json", b'{"text": "ignored: txt wins"}'),
        ("s/001.jpg", b"\xff\xd8 not text"),  # a sample with no text is skipped
        ("s/002.json", json.dumps({"text": DOCS[1]}).encode()), ("s/002.cls", b"3"),
        ("s/003.txt", DOCS[2].encode()),
    ])
    dataset = tokenize_corpus([path], tmp_path / "out", val_fraction=0, progress=False)
    assert _documents(dataset, "train", ByteTokenizer()) == DOCS[:3]
    assert dataset.index["sources"] == [{"path": str(path), "format": "tar", "bytes": path.stat().st_size,
                                         "documents": 3}]


def test_directory_inputs_mixed_formats_and_small_shards(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text(DOCS[0])
    (corpus / "sub" / "b.jsonl").write_text(json.dumps({"text": DOCS[1]}) + "\n")
    _write_tar(corpus / "c.tar", [("k.txt", DOCS[2].encode())])
    (corpus / "ignored.bin").write_bytes(b"\x00\x01")
    dataset = tokenize_corpus([corpus], tmp_path / "out", val_fraction=0, shard_tokens=20, progress=False)
    tok = ByteTokenizer()
    assert _stream(dataset, "train") == _expected_stream(tok, [DOCS[0], DOCS[2], DOCS[1]])  # sorted paths
    shards = dataset.index["splits"]["train"]["shards"]
    assert len(shards) == 3  # every document here exceeds 20 tokens: one shard each, never cut
    assert dataset.split("train").read(20, 40).tolist() == _stream(dataset, "train")[20:60]  # across shards
    monkeypatch.setattr(shards_module, "MAX_MAPPED_SHARDS", 2)
    fresh = PackedTokens(dataset.directory).split("train")
    assert fresh.read(0, fresh.num_tokens).tolist() == _stream(dataset, "train")
    assert sorted(fresh._maps) == [1, 2]  # least recently used shard unmapped


def test_split_is_by_document_hash_deterministic_and_never_empty(tmp_path):
    docs = [f"document number {n}: " + "text " * (n % 7) for n in range(200)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    dataset = tokenize_corpus([path], tmp_path / "a", val_fraction=0.1, seed=3, progress=False)
    tok = ByteTokenizer()
    val = _documents(dataset, "val", tok)
    assert val == [d for d in docs if assign_split(d, 0.1, 3) == "val"]
    assert _documents(dataset, "train", tok) == [d for d in docs if assign_split(d, 0.1, 3) == "train"]
    assert 8 <= len(val) <= 35
    again = tokenize_corpus([path], tmp_path / "b", val_fraction=0.1, seed=3, progress=False)
    assert again.fingerprint == dataset.fingerprint
    assert (tmp_path / "a" / "index.json").read_text().replace(str(tmp_path / "a"), "") == \
        (tmp_path / "b" / "index.json").read_text().replace(str(tmp_path / "b"), "")
    assert tokenize_corpus([path], tmp_path / "c", val_fraction=0.1, seed=4, progress=False).fingerprint != \
        dataset.fingerprint
    # Two documents whose hashes both say "train": one is still held out so evaluation has data.
    two = [d for d in docs if assign_split(d, 0.01, 0) == "train"][:2]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in two))
    small = tokenize_corpus([path], tmp_path / "d", val_fraction=0.01, progress=False)
    assert (_documents(small, "train", tok), _documents(small, "val", tok)) == ([two[0]], [two[1]])
    # Both splits from the other side: two documents whose hashes both say "val".
    two = [d for d in docs if assign_split(d, 0.5, 0) == "val"][:2]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in two))
    small = tokenize_corpus([path], tmp_path / "e", val_fraction=0.5, progress=False)
    assert (_documents(small, "train", tok), _documents(small, "val", tok)) == ([two[1]], [two[0]])
    for fraction in (0.01, 0.99):  # whichever split the hash picks, one document cannot make two
        path.write_text(json.dumps({"text": "only one"}) + "\n")
        with pytest.raises(UserError, match="single document"):
            tokenize_corpus([path], tmp_path / "f", val_fraction=fraction, progress=False)
    assert [assign_split("only one", f, 0) for f in (0.01, 0.99)] == ["train", "val"]


def test_checksums_detect_modified_and_truncated_shards(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    out = tmp_path / "out"
    tokenize_corpus([tmp_path / "a.txt"], out, val_fraction=0, text_unit="paragraph", progress=False)
    PackedTokens(out, verify=True)
    shard = out / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 1
    shard.write_bytes(bytes(data))
    PackedTokens(out)  # same size: only the full check can tell
    with pytest.raises(UserError, match=r"train-00000.bin: sha256 does not match index.json"):
        PackedTokens(out, verify=True)
    shard.write_bytes(bytes(data[:-3]))
    with pytest.raises(UserError, match=r"truncated or replaced shard"):
        PackedTokens(out)
    index = json.loads((out / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="content_sha256 does not match"):
        PackedTokens(out)


def test_rerun_replaces_atomically_and_a_failed_run_keeps_the_old_dataset(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"text": DOCS[0]}) + "\n" + json.dumps({"text": DOCS[1]}) + "\n")
    bad.write_text(json.dumps({"text": DOCS[2]}) + "\n{not json\n")
    out = tmp_path / "out"
    first = tokenize_corpus([good], out, val_fraction=0, progress=False).fingerprint
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        tokenize_corpus([good, bad], out, val_fraction=0, progress=False)
    assert PackedTokens(out, verify=True).fingerprint == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]  # no staging left
    second = tokenize_corpus([bad.with_name("good.jsonl"), good], out, val_fraction=0, progress=False)
    assert second.index["splits"]["train"]["documents"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to replace it"):
        tokenize_corpus([good], tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        tokenize_corpus([tmp_path / "missing.txt"], tmp_path / "out", progress=False)
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(UserError, match="hold no text"):
        tokenize_corpus([tmp_path / "blank.txt"], tmp_path / "out", progress=False)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="does not match the byte tokenizer's 256 ids"):
        tokenize_corpus([tmp_path / "x.txt"], tmp_path / "out", tokenizer="byte", vocab_size=512, progress=False)
    with pytest.raises(ConfigError, match="val_fraction=1"):
        tokenize_corpus([tmp_path / "x.txt"], tmp_path / "out", val_fraction=1, progress=False)
    (tmp_path / "broken.tar").write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(UserError, match="not a readable tar archive"):
        tokenize_corpus([tmp_path / "broken.tar"], tmp_path / "out", progress=False)


def test_demo_corpus_is_python_documentation_cut_into_sections():
    docs = demo_corpus_documents()
    assert len(docs) > 100 and sum(len(t) for _, t in docs) > 200_000
    assert docs == demo_corpus_documents()
    assert len({name for name, _ in docs}) == len(docs)
    assert split_sections("Title\n=====\n\nintro\n\nSub\n---\n\nbody\n") == ["Title\n=====\n\nintro\n",
                                                                               "Sub\n---\n\nbody\n"]
    assert module_docstrings('"""Mod."""\ndef f():\n    """Fun."""\nclass C:\n    """Cls."""\n') == \
        "Mod.\n\nFun.\n\nCls.\n"


def test_ensure_demo_dataset_builds_once_reuses_and_repairs(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_demo_dataset(tmp_path, tokenizer="byte")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    out = results[0]
    dataset = PackedTokens(out, verify=True)
    text_bytes = sum(len(t.encode()) for _, t in demo_corpus_documents())
    assert sum(s["tokens"] for s in dataset.index["splits"].values()) == text_bytes + len(demo_corpus_documents())
    assert dataset.index["splits"]["val"]["documents"] > 0
    assert isinstance(load_tokenizer(out), ByteTokenizer)
    stamp = (out / "index.json").stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path, tokenizer="byte") == out
    assert (out / "index.json").stat().st_mtime_ns == stamp  # reused
    with open(out / "train-00000.bin", "r+b") as fh:
        fh.write(b"\x00")
    assert ensure_demo_dataset(tmp_path, tokenizer="byte") == out
    PackedTokens(out, verify=True)  # rebuilt


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "alphaexa", "tokenize", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("args,message", [
    (["--input", "missing.txt"], "input missing.txt does not exist"),
    (["--input", "empty.txt"], "the inputs hold no text"),
    (["--input", "text.txt", "--tokenizer", "sentencepiece", "--vocab-size", "100"], "vocab_size=100 is too small"),
    (["--input", "text.txt", "--tokenizer", "sentencepiece"], "--vocab-size is required"),
    (["--input", "text.txt", "--demo"], "give either --input PATH... or --demo"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "text.txt").write_text("some text\nmore text\n")
    result = _cli(*args, "--out", "ds", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("alphaexa tokenize: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ds").exists()


def test_cli_trains_sentencepiece_and_writes_the_dataset(tmp_path):
    result = _cli("--demo", "--out", "ds", "--tokenizer", "sentencepiece", "--vocab-size", "1024",
                  "--val-fraction", "0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tokenize [####################] 100.0%" in result.stderr and "tok/s" in result.stderr
    assert "sentencepiece tokenizer, 1024 ids, uint16" in result.stdout
    dataset = PackedTokens(tmp_path / "ds", verify=True)
    tok = dataset.load_tokenizer()
    assert tok.vocab_size == 1024 and tok.train_settings["model_type"] == "bpe"
    _, text = demo_corpus_documents()[0]
    assert _documents(dataset, assign_split(text, 0.1, 0), tok)[0] == text


def test_demo_dataset_for_model_follows_the_model_tokenizer(tmp_path):
    from topology.presets import get_preset

    expected = {"debug": ("byte", 256), "tiny-moe": ("sentencepiece", 2048), "1b": ("sentencepiece", 8192)}
    for preset, (kind, ids) in expected.items():
        cfg = get_preset(preset)
        tokenizer = load_tokenizer(demo_dataset_for_model(cfg, tmp_path))
        assert (tokenizer.kind, tokenizer.vocab_size) == (kind, ids)
        tokenizer.check_fits(cfg.vocab_size)  # 1b: 32000 embedding rows for 8192 ids
