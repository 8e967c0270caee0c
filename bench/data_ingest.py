"""Data pipeline figures: ingestion tokens/s, SentencePiece training time, compression, loader rate.

    .venv/bin/python bench/data_ingest.py [--shakespeare PATH] [--repeat N] [--workdir DIR]

Corpora: the built-in demo corpus (Python documentation) and, when present,
tinyshakespeare (../shared/data/tinyshakespeare.txt, one document per paragraph).
``--repeat N`` concatenates N copies of each corpus to measure sustained
ingestion on more data (SentencePiece training always uses one copy).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from alphaexa.data import PackedSamples, TrainLoader, tokenize_corpus, train_sentencepiece, write_demo_corpus
from alphaexa.data.sources import discover_sources, read_documents
from alphaexa.errors import UserError

DEFAULT_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def corpora(workdir: Path, shakespeare: Path, repeat: int) -> dict[str, tuple[list[Path], str]]:
    found = {"python-docs": (write_demo_corpus(workdir / "python-docs"), "file")}
    if shakespeare.is_file():
        found["tinyshakespeare"] = ([shakespeare], "paragraph")
    if repeat > 1:
        for name, (files, unit) in list(found.items()):
            big = workdir / f"{name}-x{repeat}.txt"
            big.write_text("\n\n".join(f.read_text() for f in files * repeat))
            found[f"{name} x{repeat}"] = ([big], "paragraph")
    return found


def documents(files: list[Path], unit: str) -> list[str]:
    return [text for source in discover_sources(files) for text, _ in read_documents(source, unit)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shakespeare", type=Path, default=DEFAULT_SHAKESPEARE)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alphaexa-bench-data-"))
    found = corpora(workdir, args.shakespeare, args.repeat)

    print("== SentencePiece training (in-process, 4 threads, byte fallback)")
    print(f"{'corpus':<22}{'type':<9}{'vocab':>7}{'train s':>9}{'bytes/token':>13}")
    models = {}
    for name, (files, unit) in found.items():
        if " x" in name:
            continue
        docs = documents(files, unit)
        text_bytes = sum(len(d.encode()) for d in docs)
        for model_type in ("bpe", "unigram"):
            for vocab in (2048, 8192):
                start = time.perf_counter()
                try:
                    tok = train_sentencepiece(docs, vocab, model_type)
                except UserError as e:
                    print(f"{name:<22}{model_type:<9}{vocab:>7}  n/a: {str(e).split(': ')[-1]}")
                    continue
                seconds = time.perf_counter() - start
                tokens = sum(len(ids) for ids in tok.encode_batch(docs))
                print(f"{name:<22}{model_type:<9}{vocab:>7}{seconds:>9.2f}{text_bytes / tokens:>13.2f}")
                models[(name, model_type, vocab)] = tok

    print("\n== Ingestion (read, tokenize, split, write shards + checksums)")
    print(f"{'corpus':<22}{'tokenizer':<18}{'MB':>7}{'tokens':>11}{'seconds':>9}{'tok/s':>12}{'MB/s':>8}{'B/tok':>7}")
    for name, (files, unit) in found.items():
        base = name.split(" x")[0]
        for label, tok in [("byte", "byte"), ("spm bpe 2048", models.get((base, "bpe", 2048))),
                           ("spm bpe 8192", models.get((base, "bpe", 8192)))]:
            if tok is None:
                continue
            out = workdir / "out"
            start = time.perf_counter()
            dataset = tokenize_corpus(files, out, tokenizer=tok, val_fraction=0.01, text_unit=unit, progress=False)
            seconds = time.perf_counter() - start
            in_bytes = sum(s["bytes"] for s in dataset.index["sources"])
            tokens = sum(s["tokens"] for s in dataset.index["splits"].values())
            print(f"{name:<22}{label:<18}{in_bytes / 1e6:>7.2f}{tokens:>11}{seconds:>9.2f}{tokens / seconds:>12.0f}"
                  f"{in_bytes / 1e6 / seconds:>8.2f}{in_bytes / tokens:>7.2f}")

    print("\n== Loader (memory-mapped samples, prefetch 2): global batch 8 x 2048 tokens, dp 1")
    dataset = tokenize_corpus(found["python-docs"][0], workdir / "out", val_fraction=0, progress=False)
    with TrainLoader(PackedSamples(dataset, 2048), 8, prefetch=2) as loader:
        next(loader)
        start = time.perf_counter()
        steps = 200
        for _ in range(steps):
            next(loader)
        seconds = time.perf_counter() - start
    print(f"{steps / seconds:.0f} batches/s = {steps * 8 * 2048 / seconds / 1e6:.1f} M tokens/s")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
