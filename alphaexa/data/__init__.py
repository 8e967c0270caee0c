"""Data: tokenizers, ingestion into packed token shards, and the resumable data-parallel loader.

What the trainer needs (docs/data.md has the details)::

    from alphaexa.data import demo_dataset_for_model, PackedTokens, PackedSamples, TrainLoader, validation_batches
    data_dir = demo_dataset_for_model(model_cfg)     # or a directory made by `alphaexa tokenize`
    dataset = PackedTokens(data_dir)
    tokenizer = dataset.load_tokenizer(); tokenizer.check_fits(model_cfg.vocab_size)
    train = TrainLoader(PackedSamples(dataset, seq_len), global_batch, dp_rank, dp_size, seed)
    batch = next(train)                              # batch.inputs / batch.targets: LongTensor [B/dp, seq_len]
    checkpoint["data"] = train.state_dict(); train.load_state_dict(checkpoint["data"])  # any dp size
    for batch in validation_batches(PackedSamples(dataset, seq_len, "val"), eval_batch, dp_rank, dp_size): ...

Nothing here imports torch at module import time (``alphaexa tokenize`` stays fast).
"""
from .demo_corpus import demo_corpus_documents, write_demo_corpus
from .ingest import default_cache_dir, demo_dataset_for_model, ensure_demo_dataset, tokenize_corpus
from .loader import Batch, PackedSamples, TrainLoader, validation_batches
from .sampler import IndexPermutation, ResumableSampler
from .shards import PackedTokens
from .tokenizer import (
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_vocab_fits,
    load_tokenizer,
    train_sentencepiece,
)

__all__ = ["Batch", "ByteTokenizer", "IndexPermutation", "PackedSamples", "PackedTokens", "ResumableSampler",
           "SentencePieceTokenizer", "Tokenizer", "TrainLoader", "check_vocab_fits", "default_cache_dir",
           "demo_corpus_documents", "demo_dataset_for_model", "ensure_demo_dataset", "load_tokenizer",
           "tokenize_corpus", "train_sentencepiece", "validation_batches", "write_demo_corpus"]
