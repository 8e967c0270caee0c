"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

Prompts of different lengths run as one batch.  They are prefilled right-padded
in one forward (under the causal mask a real token never sees the padding
after it) and every row then continues from its own length; the cache attends
each row to its own keys only.  MoE layers run dropless in evaluation mode, so
a row's tokens do not depend on the other rows.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from topology.modelcfg import ModelConfig

from ..errors import UserError
from .transformer import Transformer

# (row, the row's new tokens so far) -> (vocab,) bool mask of the allowed next tokens, or None
TokenMask = Callable[[int, list[int]], Tensor | None]


@dataclass
class Generation:
    """``tokens[b]``: the new tokens of row b (up to and including EOS when it was produced).
    ``logits[t]``: (B, vocab) float32 logits the step-t token was drawn from (when asked for)."""

    tokens: list[list[int]]
    logits: list[Tensor] | None = None


def prompt_rows(prompts: Sequence[Sequence[int]] | Tensor, attention_mask: Tensor | None = None) -> list[list[int]]:
    """The real tokens of each prompt: a list of token lists, or a (B, S) tensor whose
    ``attention_mask`` (1 = token, 0 = padding) marks them, padded on the left or the right."""
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompt tensor must be (batch, seq), got shape {tuple(prompts.shape)}")
        mask = torch.ones_like(prompts, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if mask.shape != prompts.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from prompts {tuple(prompts.shape)}")
        rows = []
        for tokens, keep in zip(prompts.tolist(), mask.tolist()):
            real = [i for i, k in enumerate(keep) if k]
            if real and real[-1] - real[0] + 1 != len(real):
                raise ValueError("attention_mask must mark one contiguous run of tokens per row (left or right padding)")
            rows.append([tokens[i] for i in real])
    else:
        rows = [[int(t) for t in p] for p in prompts]
    if not rows or any(not r for r in rows):
        raise ValueError("every prompt needs at least one token")
    return rows


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits`` (B, V).  temperature 0 = greedy; top_k 0 and top_p 1 = off.
    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``."""
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth_best = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_scores = sorted_scores.masked_fill(mass_before >= top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate(model: Transformer, prompts: Sequence[Sequence[int]] | Tensor, max_new_tokens: int, *,
             attention_mask: Tensor | None = None, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int | None = None, seed: int | None = None,
             return_logits: bool = False, allowed_tokens: TokenMask | None = None) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens; a row stops after emitting ``eos_id``.
    ``allowed_tokens(row, new_tokens)`` constrains decoding (a grammar, a JSON Schema): it returns
    a (vocab,) bool tensor of the tokens row ``row`` may emit next, or None for no constraint."""
    rows = prompt_rows(prompts, attention_mask)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lengths = [len(r) for r in rows]
    needed = max(lengths) + max_new_tokens - 1
    if needed > model.cfg.max_seq_len:
        raise ValueError(f"the longest prompt ({max(lengths)} tokens) plus {max_new_tokens} new tokens needs "
                         f"{needed} positions; the model has max_seq_len={model.cfg.max_seq_len}")
    was_training = model.training
    model.eval()
    device = model.tok_embeddings.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    padded = torch.zeros(len(rows), max(lengths), dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        padded[b, :len(row)] = torch.tensor(row, device=device)
    cache = model.new_kv_cache(len(rows), needed)
    try:
        prefill = model(padded, cache=cache)
        cache.lengths = list(lengths)
        step_logits = prefill[torch.arange(len(rows), device=device), torch.tensor(lengths, device=device) - 1]
        out: list[list[int]] = [[] for _ in rows]
        finished = [False] * len(rows)
        all_logits = []
        for step in range(max_new_tokens):
            if allowed_tokens is not None:
                step_logits = _mask_rows(step_logits, out, finished, allowed_tokens)
            if return_logits:
                all_logits.append(step_logits.float().cpu())
            next_tokens = sample_next(step_logits, temperature, top_k, top_p, generator)
            for b, token in enumerate(next_tokens.tolist()):
                if not finished[b]:
                    out[b].append(token)
                    finished[b] = token == eos_id
            if all(finished) or step == max_new_tokens - 1:
                break
            step_logits = model(next_tokens.unsqueeze(1), cache=cache)[:, 0]
    finally:
        model.train(was_training)
    return Generation(out, all_logits if return_logits else None)


def _mask_rows(logits: Tensor, out: list[list[int]], finished: list[bool], allowed_tokens: TokenMask) -> Tensor:
    logits = logits.clone()
    for b, tokens in enumerate(out):
        allowed = None if finished[b] else allowed_tokens(b, tokens)
        if allowed is not None:
            if not bool(allowed.any()):
                raise ValueError(f"the decoding constraint allows no token after {len(tokens)} tokens of row {b}")
            logits[b, :allowed.shape[0]].masked_fill_(~allowed.to(logits.device), float("-inf"))
            logits[b, allowed.shape[0]:] = float("-inf")
    return logits


def load_model_for_generation(checkpoint: str | Path, cfg: ModelConfig, device: torch.device | str = "cpu",
                              dtype: torch.dtype = torch.float32) -> Transformer:
    """A model with the weights of a ``torch.save(model.state_dict())`` file (or a directory
    holding exactly one ``*.pt``/``*.pth`` file, or ``{"model": state_dict}``), in eval mode."""
    path = Path(checkpoint)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth"))
        if len(files) != 1:
            raise UserError(f"checkpoint directory {path} must hold exactly one .pt/.pth state-dict file "
                            f"(found {len(files)}); sharded checkpoints are not supported here yet")
        path = files[0]
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit model {cfg.name!r}: "
                        f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                        f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise UserError(f"checkpoint {path} does not fit model {cfg.name!r}: {str(e).splitlines()[-1].strip()}") from None
    model.to(dtype)
    model.tie_weights()
    model.init_buffers()
    return model.eval()
