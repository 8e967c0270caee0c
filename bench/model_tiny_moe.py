"""Train the ``tiny-moe`` preset single-process on a real corpus and report how far the loss falls.

Corpus: ../shared/data/tinyshakespeare.txt when present, else the built-in demo
corpus (CPython's documentation text).  Tokenizer: SentencePiece BPE with the
preset's 2048 ids trained on the corpus (``--tokenizer byte`` for raw bytes).
The last 10% of the token stream is held out.

Prints the initial loss, the unigram baseline (entropy of the empirical
training unigram distribution, and its cross-entropy on the held-out part, in
nats/token) and the final train / held-out losses.

    .venv/bin/python bench/model_tiny_moe.py [--steps 300] [--tokenizer sentencepiece|byte]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alphaexa.data.tokenizer import ByteTokenizer, train_sentencepiece
from alphaexa.model import build_model, moe_metrics
from topology.presets import get_preset

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def load_corpus() -> tuple[str, str]:
    if SHARED_CORPUS.is_file():
        return "tinyshakespeare", SHARED_CORPUS.read_text(encoding="utf-8")
    from alphaexa.data.demo_corpus import demo_corpus_documents, demo_corpus_name

    return demo_corpus_name(), "\n".join(text for _, text in demo_corpus_documents())


def unigram_baselines(train: torch.Tensor, held_out: torch.Tensor, vocab: int) -> tuple[float, float]:
    """Entropy of the training unigram distribution, and its cross-entropy on held-out tokens
    (add-one smoothing so unseen ids get a finite cost), both in nats/token."""
    counts = torch.bincount(train, minlength=vocab).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    smoothed = (counts + 1) / (counts.sum() + vocab)
    cross_entropy = float(-smoothed.log()[held_out].mean())
    return entropy, cross_entropy


def batch_of(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def mean_loss(model, tokens: torch.Tensor, starts: torch.Tensor, seq_len: int, batch: int) -> float:
    model.eval()
    losses = []
    for i in range(0, len(starts), batch):
        x, y = batch_of(tokens, starts[i:i + batch], seq_len)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--tokenizer", choices=("sentencepiece", "byte"), default="sentencepiece")
    # One thread: on a shared, loaded 2-core machine two threads wait on each other (3-4x slower).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    corpus_name, text = load_corpus()
    cfg = get_preset("tiny-moe")
    started = time.perf_counter()
    if args.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    else:
        tokenizer = train_sentencepiece([text], cfg.vocab_size, seed=args.seed)
    tokenizer.check_fits(cfg.vocab_size)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(0.9 * len(tokens))
    train, held_out = tokens[:split], tokens[split:]
    entropy, unigram_ce = unigram_baselines(train, held_out, cfg.vocab_size)

    model = build_model(cfg, seed=args.seed).train()
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 15)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(args.seed)
    eval_starts = torch.randint(0, len(held_out) - args.seq_len - 1, (64,), generator=gen)
    train_eval_starts = torch.randint(0, len(train) - args.seq_len - 1, (64,), generator=gen)
    initial_held_out = mean_loss(model, held_out, eval_starts, args.seq_len, args.batch)
    setup_s = time.perf_counter() - started

    print(f"corpus {corpus_name}: {len(text):,} chars -> {len(tokens):,} {tokenizer.kind} tokens "
          f"(vocab {tokenizer.vocab_size}); train {len(train):,}, held out {len(held_out):,}")
    print(f"model tiny-moe: {sum(p.numel() for p in params):,} parameters; batch {args.batch} x {args.seq_len}, "
          f"{args.steps} steps, AdamW lr {args.lr}, {torch.get_num_threads()} threads")
    print(f"uniform over the vocabulary:         {math.log(cfg.vocab_size):.3f} nats/token")
    print(f"unigram entropy (train):             {entropy:.3f} nats/token")
    print(f"unigram cross-entropy (held out):    {unigram_ce:.3f} nats/token")
    print(f"initial held-out loss:               {initial_held_out:.3f}")

    started = time.perf_counter()
    running = None
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = batch_of(train, torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=gen),
                        args.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the MoE aux/z-loss gradients ride along (injected by the MoE layers)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step == 0:
            print(f"step    1  loss {loss.item():.3f}")
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            m = moe_metrics(model)
            print(f"step {step + 1:4d}  loss {running:.3f} (smoothed)  aux {m['moe_aux_loss']:.3f}  "
                  f"max expert load {m['moe_max_load']:.2f}x  {(time.perf_counter() - started) / (step + 1):.2f} s/step")
    train_s = time.perf_counter() - started

    final_train = mean_loss(model, train, train_eval_starts, args.seq_len, args.batch)
    final_held_out = mean_loss(model, held_out, eval_starts, args.seq_len, args.batch)
    print(f"final train loss:                    {final_train:.3f}")
    print(f"final held-out loss:                 {final_held_out:.3f}  "
          f"({unigram_ce - final_held_out:.3f} nats below the held-out unigram baseline)")
    print(f"time: setup {setup_s:.1f} s, training {train_s:.1f} s")
    if not final_held_out < unigram_ce:
        print("FAIL: held-out loss did not fall below the unigram baseline", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
