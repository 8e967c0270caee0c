"""Layout: how a model is split over the ranks of a job (torch-free).

The same field names are used everywhere: the run config's ``parallel``
section, ``--set parallel.KEY=VALUE``, the planner's ``layout`` and the plan JSON.

Rank order (what ``init_device_mesh`` gets and what placement assumes) is
row-major over ``MESH_DIMS = (pp, dp_replicate, dp_shard, cp, tp)``: tp is the
innermost (fastest-varying) dimension so tensor-parallel groups are consecutive
ranks and land on one node, pp is the outermost so pipeline stages split the
job into contiguous blocks of nodes.

world = pp * dp_replicate * dp_shard * cp * tp.

Data parallelism: ``dp_replicate`` ranks hold replicas (gradients all-reduced),
``dp_shard`` ranks share one copy split per ``sharding``:
  zero1 - optimizer state sharded over dp_shard,
  zero2 - optimizer state and gradients sharded,
  zero3 - parameters too (FSDP2 ``fully_shard``; with dp_replicate > 1 it is HSDP).
``sharding="none"`` means plain replication, so it requires dp_shard == 1
(put the replicas in dp_replicate).

Expert parallelism borrows ranks: the ``ep`` ranks of one expert group are
consecutive members of the flattened (dp_replicate, dp_shard, cp) data ranks
(stride tp, so inside one node whenever ep * tp fits), hence ep must divide
dp_replicate * dp_shard * cp and n_experts.  Inside a tensor-parallel group the
expert FFNs are split tp ways like the dense FFN (expert tensor-parallel = tp).
Expert weights are replicated over the remaining dp_replicate*dp_shard*cp/ep
data ranks, which is where their gradients are reduced.

``vpp`` is the number of model chunks per pipeline rank: 1 for gpipe and 1f1b,
>= 2 for interleaved1f1b, exactly 2 for zbv (the V-shaped zero-bubble schedule).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .modelcfg import ConfigError, ModelConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
SCHEDULES = ("gpipe", "1f1b", "interleaved1f1b", "zbv")
RECOMPUTE_MODES = ("none", "selective", "full")
SHARDING_MODES = ("none", "zero1", "zero2", "zero3")
INT_FIELDS = ("tp", "pp", "vpp", "dp_replicate", "dp_shard", "ep", "cp", "mbs")
CHOICE_FIELDS = {"schedule": SCHEDULES, "recompute": RECOMPUTE_MODES, "sharding": SHARDING_MODES}


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp_replicate: int = 1
    dp_shard: int = -1  # -1: whatever is left of the world (see resolve)
    ep: int = 1
    cp: int = 1
    mbs: int = 1  # micro-batch size, sequences per rank per micro-step
    schedule: str = "1f1b"
    recompute: str = "none"
    sharding: str = "zero3"

    # ------------------------------------------------------------ derived
    @property
    def dp(self) -> int:
        """Data-parallel degree (replicas x shards); needs a resolved dp_shard."""
        self._require_resolved()
        return self.dp_replicate * self.dp_shard

    @property
    def world(self) -> int:
        self._require_resolved()
        return self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def non_data(self) -> int:
        """Ranks per data-parallel replica slot: pp * cp * tp."""
        return self.pp * self.cp * self.tp

    @property
    def expert_dp(self) -> int:
        """Ranks over which one expert shard is replicated (its gradient-reduction group)."""
        return self.dp * self.cp // self.ep

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        self._require_resolved()
        return tuple(getattr(self, d) for d in MESH_DIMS)

    def n_microbatches(self, global_batch: int) -> int:
        """Micro-batches per step per pipeline: global_batch / (mbs * dp)."""
        per_step = self.mbs * self.dp
        if global_batch % per_step:
            raise ConfigError(f"global_batch={global_batch} is not divisible by mbs*dp_replicate*dp_shard"
                              f" = {self.mbs}*{self.dp_replicate}*{self.dp_shard} = {per_step}")
        return global_batch // per_step

    def _require_resolved(self) -> None:
        if self.dp_shard < 1:
            raise ConfigError("dp_shard=-1 is not resolved yet; call layout.resolve(world_size)")

    # --------------------------------------------------------- resolution
    def resolve(self, world: int) -> Layout:
        """Replace dp_shard=-1 by whatever is left of ``world``; then validate against it."""
        if world < 1:
            raise ConfigError(f"world size must be >= 1, got {world}")
        self._check_values()
        out = self
        if self.dp_shard == -1:
            fixed = self.pp * self.dp_replicate * self.cp * self.tp
            if world % fixed:
                raise ConfigError(f"world size {world} is not divisible by pp*dp_replicate*cp*tp = {fixed}")
            out = dataclasses.replace(self, dp_shard=world // fixed)
        out.validate(world=world)
        return out

    # --------------------------------------------------------- validation
    def _check_values(self) -> None:
        for f in INT_FIELDS:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"parallel.{f}={v!r}: must be an integer")
            if f == "dp_shard" and v == -1:
                continue
            if v < 1:
                raise ConfigError(f"parallel.{f}={v}: must be >= 1" + (" (or -1 = the rest of the world)"
                                                                       if f == "dp_shard" else ""))
        for f, choices in CHOICE_FIELDS.items():
            if getattr(self, f) not in choices:
                raise ConfigError(f"parallel.{f}={getattr(self, f)!r}: must be one of {', '.join(choices)}")

    def validate(self, world: int | None = None, model: ModelConfig | None = None,
                 global_batch: int | None = None, seq_len: int | None = None) -> None:
        """Raise ConfigError (one line) on the first violated rule; silent when the layout is usable."""
        self._check_values()
        self._check_schedule()
        if self.dp_shard > 1 and self.sharding == "none":
            raise ConfigError(f"sharding=none with dp_shard={self.dp_shard}: a sharded data-parallel "
                              "dimension needs zero1|zero2|zero3 (put plain replicas in dp_replicate)")
        if world is not None:
            if self.dp_shard == -1:
                # resolve() checks the world; the resolved layout checks everything else.
                self.resolve(world).validate(None, model, global_batch, seq_len)
                return
            product = self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp
            if product != world:
                raise ConfigError(f"world size {world} != pp*dp_replicate*dp_shard*cp*tp = {product}")
        if self.dp_shard != -1 and (self.dp_replicate * self.dp_shard * self.cp) % self.ep:
            raise ConfigError(f"ep={self.ep} does not divide dp_replicate*dp_shard*cp = "
                              f"{self.dp_replicate * self.dp_shard * self.cp}")
        if model is not None:
            self._check_model(model)
        if seq_len is not None:
            self._check_seq(seq_len, model)
        if global_batch is not None and self.dp_shard != -1:
            m = self.n_microbatches(global_batch)
            if self.pp > 1 and m < self.pp:
                raise ConfigError(f"{m} micro-batches per step is fewer than pp={self.pp} pipeline stages "
                                  f"(global_batch={global_batch} / (mbs={self.mbs} * dp={self.dp}))")
            if self.schedule == "interleaved1f1b" and m % self.pp:
                raise ConfigError(f"interleaved1f1b needs the number of micro-batches ({m}) to be a "
                                  f"multiple of pp={self.pp}")

    def _check_schedule(self) -> None:
        if self.pp == 1:
            if self.vpp != 1:
                raise ConfigError(f"vpp={self.vpp} needs pipeline parallelism (pp=1)")
            return
        if self.schedule in ("gpipe", "1f1b") and self.vpp != 1:
            raise ConfigError(f"schedule={self.schedule} runs one stage per rank; vpp={self.vpp} needs "
                              "interleaved1f1b or zbv")
        if self.schedule == "interleaved1f1b" and self.vpp < 2:
            raise ConfigError("schedule=interleaved1f1b needs vpp >= 2 stages per rank")
        if self.schedule == "zbv" and self.vpp != 2:
            raise ConfigError(f"schedule=zbv runs exactly 2 stages per rank (V shape); got vpp={self.vpp}")

    def _check_model(self, model: ModelConfig) -> None:
        def need_divides(name: str, value: int, what: str, total: int) -> None:
            if total % value:
                raise ConfigError(f"{name}={value} does not divide {what}={total}")

        need_divides("tp", self.tp, "n_heads", model.n_heads)
        need_divides("tp", self.tp, "n_kv_heads", model.n_kv_heads)
        need_divides("tp", self.tp, "d_ff", model.d_ff)
        if model.is_moe:
            need_divides("tp", self.tp, "moe_d_ff", model.moe_d_ff)
        if self.pp > model.n_layers:
            raise ConfigError(f"pp={self.pp} exceeds n_layers={model.n_layers}")
        if self.pp * self.vpp > model.n_layers:
            raise ConfigError(f"pp*vpp = {self.pp * self.vpp} pipeline stages exceed n_layers={model.n_layers}")
        if self.ep > 1:
            if not model.is_moe:
                raise ConfigError(f"ep={self.ep} needs a MoE model; {model.name} has no MoE blocks")
            need_divides("ep", self.ep, "n_experts", model.n_experts)

    def _check_seq(self, seq_len: int, model: ModelConfig | None) -> None:
        if model is not None and seq_len > model.max_seq_len:
            raise ConfigError(f"seq_len={seq_len} exceeds the model's max_seq_len={model.max_seq_len}")
        # Load-balanced causal context parallelism splits the sequence in 2*cp chunks.
        if self.cp > 1 and seq_len % (2 * self.cp):
            raise ConfigError(f"cp={self.cp} needs seq_len={seq_len} divisible by 2*cp = {2 * self.cp}")
        if self.tp > 1 and (seq_len // self.cp) % self.tp:
            raise ConfigError(f"sequence parallelism needs seq_len/cp = {seq_len // self.cp} divisible "
                              f"by tp={self.tp}")

    # ---------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "parallel") -> Layout:
        """Build from a mapping; string values (from ``--set``) are converted; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        clean: dict[str, Any] = {}
        for k, v in data.items():
            if k in INT_FIELDS and isinstance(v, str):
                try:
                    v = int(v)
                except ValueError:
                    raise ConfigError(f"{where}.{k}={v!r}: must be an integer") from None
            clean[k] = v
        layout = cls(**clean)
        layout._check_values()
        return layout

    def replace(self, **changes: Any) -> Layout:
        return Layout.from_dict({**self.to_dict(), **changes})

    def short(self) -> str:
        """Compact one-line description, e.g. ``tp4 pp8x2 dp2x16 ep8 mbs1 interleaved1f1b selective zero3``."""
        parts = [f"tp{self.tp}", f"pp{self.pp}" + (f"x{self.vpp}" if self.vpp > 1 else ""),
                 f"dp{self.dp_replicate}x{self.dp_shard}"]
        if self.cp > 1:
            parts.append(f"cp{self.cp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        parts += [f"mbs{self.mbs}", self.schedule if self.pp > 1 else "-", self.recompute, self.sharding]
        return " ".join(parts)


def expert_shard_dim(local_experts: int, d_model: int, shards: int) -> int:
    """The dimension FSDP shards a stacked expert weight along over its ``shards`` expert-data ranks.

    FSDP2 shards dimension 0 in ``torch.chunk`` pieces (uneven allowed) and any other dimension
    only evenly.  Dimension 0 holds this rank's whole experts: with fewer experts than shards
    most ranks would hold none and the first ones whole experts, so the d_model dimension (never
    split by expert tensor parallelism) is used when it divides evenly; failing both, dimension 0
    and its imbalance (``topology.costmodel`` charges the fullest rank).  Returns 0, or -1 for
    the d_model dimension (dimension 1 of w1/w3 (E, d, f), 2 of w2 (E, f, d)).
    """
    if local_experts % shards == 0 or d_model % shards:
        return 0
    return -1


def resolve_layout(layout: Layout | dict[str, Any], world: int, model: ModelConfig | None = None,
                   global_batch: int | None = None, seq_len: int | None = None) -> Layout:
    """dp_shard=-1 -> the rest of the world, then full validation; returns the resolved Layout."""
    if isinstance(layout, dict):
        layout = Layout.from_dict(layout)
    resolved = layout.resolve(world)
    resolved.validate(world=world, model=model, global_batch=global_batch, seq_len=seq_len)
    return resolved
