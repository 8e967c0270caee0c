"""From the run config's ``data`` section to the trainer's data: a tokenized dataset directory
(built once, cached), or WebDataset shards streamed and tokenised while training.

``check_data_inputs`` only looks (paths exist, tokenizer file exists, shards readable) and runs
before any process is spawned; ``prepare_dataset`` may tokenize (the demo corpus, or text files
into the cache) and is safe to call from every rank at once: one builds, the others wait on a
file lock and reuse its result.  ``open_training_data`` gives the trainer its tokenizer, the
held-out samples and, per rank, the training batch loader of either kind.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from topology.modelcfg import ConfigError, ModelConfig

from ..data.stream import SplitRule, check_stream_tokenizer, is_stream_spec, probe_shards, shard_urls
from ..errors import UserError
from .config import DataSection, RunConfig


def _is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and (path / "index.json").is_file()


def is_streaming(data: DataSection) -> bool:
    return data.stream or any(is_stream_spec(item) for item in data.corpus)


def check_data_inputs(data: DataSection, model: ModelConfig) -> None:
    """One-line errors for a missing corpus or tokenizer and an unusable tokenizer choice; no work
    beyond reading shard headers (and the first shard that is a command or URL) when streaming."""
    if is_streaming(data):
        check_stream_tokenizer(_tokenizer_kind(data, model))
        probe_shards(shard_urls(data.corpus))
        return
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


def prepare_dataset(data: DataSection, model: ModelConfig, progress: bool = False) -> Path | None:
    """The dataset directory for this config, tokenizing into the cache the first time (None when
    the corpus is streamed: nothing is prepared up front)."""
    from ..data import default_cache_dir, ensure_demo_dataset, tokenize_corpus
    from ..data.ingest import exclusive_lock

    if is_streaming(data):  # preflight has probed the shards; the ranks read them
        return None
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


@dataclass
class TrainingData:
    """What the trainer reads: the tokenizer, the held-out samples, where the data came from (for
    events and manifests) and how to make this rank's training loader."""

    tokenizer: Any
    val_samples: Any  # PackedSamples or StreamValidation
    source: str  # the dataset directory, or the shard list of a stream
    _make_loader: Any

    def loader(self, rows: np.ndarray, pin_memory: bool):
        return self._make_loader(rows, pin_memory)


def open_training_data(cfg: RunConfig, progress: bool = False) -> TrainingData:
    from ..data import PackedSamples, PackedTokens, load_tokenizer
    from .batches import StepLoader

    train = cfg.train
    if not is_streaming(cfg.data):
        directory = prepare_dataset(cfg.data, cfg.model, progress=progress)
        dataset = PackedTokens(directory)
        samples = PackedSamples(dataset, train.seq_len, "train")
        return TrainingData(dataset.load_tokenizer(), PackedSamples(dataset, train.seq_len, "val"), str(directory),
                            lambda rows, pin: StepLoader(samples, train.global_batch, rows, train.seed,
                                                         prefetch=cfg.data.prefetch, pin_memory=pin))
    from ..data.stream import StreamValidation, stream_fingerprint
    from .stream_loader import StreamStepLoader

    spec = _tokenizer_kind(cfg.data, cfg.model)
    check_stream_tokenizer(spec)
    tokenizer = load_tokenizer(spec)
    urls = shard_urls(cfg.data.corpus)
    rule = SplitRule(cfg.data.val_fraction, cfg.data.split_seed)
    fingerprint = stream_fingerprint(urls, tokenizer, rule)
    val = StreamValidation(urls, tokenizer, rule, train.seq_len, train.eval_batches * train.global_batch)
    return TrainingData(tokenizer, val, f"webdataset {urls[0]}" + (f" and {len(urls) - 1} more shards" if len(urls) > 1 else ""),
                        lambda rows, pin: StreamStepLoader(urls, spec, rule, fingerprint, train.seq_len,
                                                           train.global_batch, rows, train.seed,
                                                           workers=cfg.data.stream_workers, pin_memory=pin))
