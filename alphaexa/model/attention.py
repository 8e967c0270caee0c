"""Grouped-query self-attention through ``backends.attention.attend``, and the KV cache."""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backends.attention import attend
from topology.modelcfg import ModelConfig

from .positions import apply_rope


class KVCache:
    """Keys and values of every layer for a batch of sequences being decoded.

    Each row has its own length (prompts of different lengths); a forward step
    appends the same number of new tokens to every row, at that row's own
    positions.  Rows are stored left-aligned, so row ``b`` holds positions
    ``0 .. lengths[b]-1`` and anything after that is scratch space.
    """

    def __init__(self, layer_ids: list[str], batch: int, capacity: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_ids}
        self.capacity = capacity
        self.lengths = [0] * batch

    def positions(self, new_tokens: int, device: torch.device | str) -> Tensor:
        """Absolute positions (B, new_tokens) of the tokens about to be appended."""
        starts = torch.tensor(self.lengths, device=device).unsqueeze(1)
        return starts + torch.arange(new_tokens, device=device)

    def advance(self, new_tokens: int) -> None:
        self.lengths = [n + new_tokens for n in self.lengths]

    def attend(self, layer_id: str, q: Tensor, k: Tensor, v: Tensor, window: int, kernel: str | None) -> Tensor:
        """Store k, v (B, Hkv, S, D) after each row's cached tokens and attend q to the row's keys."""
        new = q.shape[2]
        if max(self.lengths) + new > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; a row would reach {max(self.lengths) + new}")
        rows_by_start: dict[int, list[int]] = defaultdict(list)
        for row, start in enumerate(self.lengths):
            rows_by_start[start].append(row)
        if len(rows_by_start) == 1:
            return self._attend_rows(layer_id, slice(None), self.lengths[0], q, k, v, window, kernel)
        out = torch.empty_like(q)
        for start, rows in rows_by_start.items():
            index = torch.tensor(rows, device=q.device)
            out[index] = self._attend_rows(layer_id, index, start, q[index], k[index], v[index], window, kernel)
        return out

    def _attend_rows(self, layer_id: str, rows: slice | Tensor, start: int, q: Tensor, k: Tensor, v: Tensor,
                     window: int, kernel: str | None) -> Tensor:
        end = start + q.shape[2]
        self.keys[layer_id][rows, :, start:end] = k
        self.values[layer_id][rows, :, start:end] = v
        # Keys older than the window are invisible to every new query: leave them out of the call.
        first = max(0, start + 1 - window) if window else 0
        keys = self.keys[layer_id][rows, :, first:end]
        values = self.values[layer_id][rows, :, first:end]
        return attend(q, keys, values, causal=True, window=window, q_offset=start - first, kernel=kernel)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: str):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.window = cfg.sliding_window
        self.use_rope = cfg.pos_encoding == "rope"
        # None: the backend picks the best kernel for the device; a name forces one.
        self.kernel: str | None = None
        # True: q, k and v from one GEMM over the concatenated weights (``parallelize(fused_projections=)``).
        self.fused_projections = False
        self.wq = nn.Linear(cfg.d_model, cfg.q_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.q_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None = None) -> Tensor:
        batch, seq, _ = x.shape
        # -1 instead of the head counts: tensor parallelism shards the projections and
        # leaves each rank a fraction of the heads.
        if self.fused_projections:
            weights = (self.wq.weight, self.wk.weight, self.wv.weight)
            q, k, v = F.linear(x, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q, k, v = (t.view(batch, seq, -1, self.head_dim) for t in (q, k, v))
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is None:
            out = attend(q, k, v, causal=True, window=self.window, kernel=self.kernel)
        else:
            out = cache.attend(self.layer_id, q, k, v, self.window, self.kernel)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))
