"""From the run config's ``data`` section to a tokenized dataset directory (built once, cached).

``check_data_inputs`` only looks (paths exist, tokenizer file exists) and runs before any
process is spawned; ``prepare_dataset`` may tokenize (the demo corpus, or text files into
the cache) and is safe to call from every rank at once: one builds, the others wait on a
file lock and reuse its result.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from topology.modelcfg import ConfigError, ModelConfig

from ..errors import UserError
from .config import DataSection


def _is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and (path / "index.json").is_file()


def check_data_inputs(data: DataSection, model: ModelConfig) -> None:
    """One-line errors for a missing corpus or tokenizer and an unusable tokenizer choice; no work."""
    if not data.is_demo:
        for item in data.corpus:
            if item == "demo":
                raise ConfigError("data.corpus: \"demo\" cannot be combined with other inputs")
            if not Path(item).exists():
                raise UserError(f"data.corpus: {item} does not exist")
        datasets = [p for p in map(Path, data.corpus) if _is_dataset_dir(p)]
        if datasets and len(data.corpus) > 1:
            raise ConfigError(f"data.corpus: {datasets[0]} is a tokenized dataset; give it alone")
        if datasets:
            return
    kind = _tokenizer_kind(data, model)
    if kind not in ("byte", "sentencepiece") and not Path(kind).exists():
        raise UserError(f"data.tokenizer: {kind} does not exist (use auto, byte, sentencepiece or a saved tokenizer)")


def _tokenizer_kind(data: DataSection, model: ModelConfig) -> str:
    return model.tokenizer if data.tokenizer == "auto" else data.tokenizer


def prepare_dataset(data: DataSection, model: ModelConfig, progress: bool = False) -> Path:
    """The dataset directory for this config, tokenizing into the cache the first time."""
    from ..data import default_cache_dir, ensure_demo_dataset, tokenize_corpus
    from ..data.ingest import exclusive_lock

    check_data_inputs(data, model)
    cache = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
    kind = _tokenizer_kind(data, model)
    vocab = model.vocab_size if kind == "sentencepiece" else None
    if data.is_demo:
        if kind not in ("byte", "sentencepiece"):
            raise ConfigError(f"data.tokenizer={kind!r}: the demo corpus is built with byte or sentencepiece")
        return ensure_demo_dataset(cache, tokenizer=kind, vocab_size=vocab, model_type=data.sp_model_type,
                                   val_fraction=data.val_fraction, seed=data.split_seed, progress=progress)
    inputs = [Path(p).resolve() for p in data.corpus]
    if len(inputs) == 1 and _is_dataset_dir(inputs[0]):
        return inputs[0]
    key = _corpus_key(inputs, kind, vocab, data)
    out = cache / f"corpus-{key}"
    with exclusive_lock(cache / f".corpus-{key}.lock"):
        if not _is_dataset_dir(out):
            tokenize_corpus(inputs, out, tokenizer=kind, vocab_size=vocab, model_type=data.sp_model_type,
                            val_fraction=data.val_fraction, seed=data.split_seed, text_unit=data.text_unit,
                            progress=progress, metadata={"corpus": [str(p) for p in inputs]})
    return out


def _corpus_key(inputs: list[Path], tokenizer: str, vocab: int | None, data: DataSection) -> str:
    """Names the cached build: the inputs (path, size, mtime of every file) and every setting."""
    files = []
    for root in inputs:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                stat = path.stat()
                files.append([str(path), stat.st_size, stat.st_mtime_ns])
    material = {"files": files, "tokenizer": str(tokenizer), "vocab": vocab, "model_type": data.sp_model_type,
                "val_fraction": data.val_fraction, "seed": data.split_seed, "text_unit": data.text_unit}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
