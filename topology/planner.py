"""Parallelism planner: search every valid layout, rank the ones that fit by predicted step time.

``plan(model, system, nodes, global_batch, seq_len, pins={...}, top=K)`` enumerates
tp, cp, pp, schedule/vpp, ep, micro-batch, recomputation, sharding and the
dp_replicate x dp_shard split, keeps the layouts whose peak device memory fits,
and returns the K fastest with their cost breakdown and placement.

Search rules (what "every valid combination" means here):

* tp divides the ranks of a node (a tensor-parallel group never leaves the
  node's fastest link domain) and the model's heads, KV heads, FFN widths and
  vocabulary (vocabulary-parallel embedding and loss);
* cp is a power of two with at least 1024 tokens per rank and the sequence
  divisible by 2*cp (load-balanced causal ring attention);
* pp divides what tp*cp leaves of the world and is at most n_layers (1 for a
  model with tied embedding and LM head, which cannot sit on two stages);
  schedules: gpipe and 1f1b (vpp=1), interleaved1f1b (vpp 2, 3, 4, 6, 8) and
  zbv (vpp=2) whenever pp*vpp <= n_layers;
* ep divides n_experts and dp_replicate*dp_shard*cp;
* mbs is a power of two that divides global_batch/dp with at least pp
  micro-batches (a multiple of pp for interleaved1f1b);
* sharding none requires dp_shard=1; zero1/2/3 with a sharding group of 1 are
  the same layout as none and are not listed separately.

Pins fix any Layout field (and ``dp`` = dp_replicate*dp_shard); with every
field pinned exactly one layout is evaluated.

Pruning never changes the answer: for a fixed rest of the layout, recomputation
only adds time, so once "none" fits, "selective" and "full" are counted as
feasible but not costed (likewise "selective" when it saves no memory, i.e.
with fused attention); and a layout whose step-time lower bound (its pipeline
without data-parallel traffic or optimizer) is already slower than the current
K-th best is checked for memory only.
"""
from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .costmodel import (
    OFFLOAD_USABLE,
    Estimate,
    Request,
    dp_groups,
    estimate,
    memory_breakdown,
    peak_memory_bytes,
    sharded_cost,
    structures,
)
from .hardware import GIB, System, load_system
from .layout import CHOICE_FIELDS, INT_FIELDS, RECOMPUTE_MODES, SHARDING_MODES, Layout
from .modelcfg import ConfigError, ModelConfig, human, param_counts
from .placement import Placement, place
from .presets import resolve_model
from .support import (
    OFFLOADS,
    SUPPORTED_CP,
    TRAINER_ENGINES,
    check_supported,
    pipeline_supported,
    tp_supported,
    unsupported,
)

PIN_KEYS = (*INT_FIELDS, *CHOICE_FIELDS, "dp")
INTERLEAVE_CHOICES = (2, 3, 4, 6, 8)
MIN_TOKENS_PER_CP_RANK = 1024
EXPLAIN_ALTERNATIVES = 8  # runners-up listed by --explain, closest first


# ------------------------------------------------------------------ results
@dataclass
class Plan:
    estimate: Estimate
    placement: Placement
    engine: str = "native"  # run config parallel.engine
    offload: str = "none"  # parallel.offload
    nvme_path: str | None = None  # parallel.nvme_path (offload=nvme)

    def to_dict(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "layout": e.layout.to_dict(),
            # with the layout, the run config's [parallel] section: how the trainer runs it
            "engine": self.engine,
            "offload": self.offload,
            "nvme_path": self.nvme_path,
            "memory_gib": {k: round(v, 3) for k, v in e.memory.items()},
            "step_time_s": e.step_time_s,
            "tokens_per_s": e.tokens_per_s,
            "model_tflops_per_device": e.model_tflops_per_device,
            "mfu": e.mfu,
            "microbatches": e.microbatches,
            "breakdown": e.breakdown,
            "placement": self.placement.to_dict(),
        }


@dataclass
class PlanResult:
    request: Request
    plans: list[Plan]
    candidates: int
    feasible: int
    evaluated: int
    seconds: float
    pins: dict[str, Any]
    nearest_miss: Estimate | None = None  # the layout with the least memory when nothing fits
    advice: list[str] = field(default_factory=list)
    runners_up: dict[str, Estimate] = field(default_factory=dict)  # best per alternative, for --explain
    offload_reason: str = ""  # why the plans offload (only when they do)

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None

    def validation(self) -> dict[str, Any]:
        """How far the cost model has been from published runs on this system's device
        (``topology.validation.plan_record``: computed on first use for that device only, then cached)."""
        from .validation import plan_record

        return plan_record(self.request.system)

    def to_dict(self) -> dict[str, Any]:
        req = self.request
        out = {
            "model": req.model.to_dict(),
            "system": {**req.system.summary(), "nodes": req.nodes},
            "request": {"global_batch": req.global_batch, "seq_len": req.seq_len, "nodes": req.nodes,
                        "world": req.world, "pins": self.pins},
            "plans": [p.to_dict() for p in self.plans],
            "search": {"candidates": self.candidates, "feasible": self.feasible, "evaluated": self.evaluated,
                       "seconds": round(self.seconds, 4)},
        }
        if self.offload_reason:
            out["offload_reason"] = self.offload_reason
        if self.plans:
            out["validation"] = self.validation()
        if not self.plans:
            out["infeasible"] = {
                "advice": self.advice,
                "nearest": None if self.nearest_miss is None else {
                    "layout": self.nearest_miss.layout.to_dict(),
                    "memory_gib": {k: round(v, 3) for k, v in self.nearest_miss.memory.items()}},
            }
        return out

    def to_json(self, indent: int | None = 1, extra: dict[str, Any] | None = None) -> str:
        """The plan JSON (plus ``extra`` top-level keys); each placement rank on one line (thousands of
        ranks stay readable)."""
        d = {**self.to_dict(), **(extra or {})}
        rank_lists = []
        for i, p in enumerate(d["plans"]):
            rank_lists.append(p["placement"]["ranks"])
            p["placement"]["ranks"] = f"@ranks{i}@"
        text = json.dumps(d, indent=indent)
        for i, ranks in enumerate(rank_lists):
            rows = ",\n".join(json.dumps(r) for r in ranks)
            text = text.replace(f'"@ranks{i}@"', f"[\n{rows}\n]" if rows else "[]", 1)
        return text

    # -------------------------------------------------------- text output
    def table(self, validation: bool = True) -> str:
        """The plans, best first; ``validation``: with the device's validation record under them."""
        req = self.request
        pc = param_counts(req.model)
        head = (f"{req.model.name}: {human(pc.total)} parameters ({human(pc.active)} active) on "
                f"{req.nodes} x {req.system.name} = {req.world} {req.system.node.device.name}; "
                f"global batch {req.global_batch} x {req.seq_len} tokens")
        search = (f"searched {self.candidates} layouts ({self.feasible} fit, {self.evaluated} costed) "
                  f"in {self.seconds:.2f} s")
        if not self.plans:
            return "\n".join([head, search, "NO LAYOUT FITS", *self.advice])
        if self.offload_reason:
            search += "\n" + self.offload_reason
        cols = ("#", "tp", "pp", "vpp", "dp_r", "dp_s", "ep", "cp", "mbs", "schedule", "recompute", "sharding",
                "mem GiB", "step s", "tok/s", "TF/dev", "MFU") + (("engine", "offload") if self.offload_reason else ())
        rows = []
        for i, p in enumerate(self.plans, 1):
            e, lay = p.estimate, p.estimate.layout
            rows.append((str(i), str(lay.tp), str(lay.pp), str(lay.vpp), str(lay.dp_replicate),
                         str(lay.dp_shard), str(lay.ep), str(lay.cp), str(lay.mbs),
                         lay.schedule if lay.pp > 1 else "-", lay.recompute, lay.sharding,
                         f"{e.memory['total']:.1f}/{e.memory['capacity']:.0f}", f"{e.step_time_s:.3f}",
                         f"{e.tokens_per_s:,.0f}", f"{e.model_tflops_per_device:.1f}", f"{100 * e.mfu:.1f}%")
                        + ((p.engine, p.offload) if self.offload_reason else ()))
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        lines = [head, search, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        if validation:
            lines += self.validation()["text"]
        return "\n".join(lines)

    def explain(self) -> str:
        if not self.plans:
            return "\n".join(self.advice)
        best = self.plans[0].estimate
        lay, mem, br = best.layout, best.memory, best.breakdown
        step = best.step_time_s
        lines = [(f"Winner: {lay.short()}  ({step:.3f} s/step, {best.tokens_per_s:,.0f} tokens/s, "
                  f"MFU {100 * best.mfu:.1f}%)")]
        parts = sorted(((k[:-2], v) for k, v in br.items() if k != "dp_comm_total_s" and v > 0),
                       key=lambda kv: -kv[1])
        lines.append("Step time: " + ", ".join(f"{k} {v:.3f} s ({100 * v / step:.0f}%)" for k, v in parts))
        headroom = mem["capacity"] - mem["total"]
        lines.append(f"Memory: {mem['total']:.1f} of {mem['capacity']:.0f} GiB on pipeline stage "
                     f"{best.worst_stage} (params {mem['params']:.1f}, grads {mem['grads']:.1f}, optimizer "
                     f"{mem['optimizer']:.1f}, activations {mem['activations']:.1f}, overhead "
                     f"{mem['overhead']:.1f}); headroom {headroom:.1f} GiB")
        binds = []
        if headroom < 0.1 * mem["capacity"]:
            binds.append(f"memory (headroom {headroom:.1f} GiB): larger micro-batches or less recomputation "
                         "do not fit")
        if br["bubble_s"] > 0.1 * step:
            binds.append(f"pipeline bubble ({100 * br['bubble_s'] / step:.0f}% of the step with "
                         f"{best.microbatches} micro-batches on pp={lay.pp})")
        comm = br["tp_comm_s"] + br["ep_comm_s"] + br["dp_comm_exposed_s"] + br["pp_comm_s"] + br["cp_comm_exposed_s"]
        if comm > 0.15 * step:
            worst = max(("tp_comm_s", "ep_comm_s", "dp_comm_exposed_s", "pp_comm_s", "cp_comm_exposed_s"),
                        key=lambda k: br[k])
            groups = self.plans[0].placement.groups()
            dim = {"tp_comm_s": "tp", "ep_comm_s": "ep", "dp_comm_exposed_s": "dp_shard", "pp_comm_s": "pp",
                   "cp_comm_exposed_s": "cp"}[worst]
            binds.append(f"bandwidth ({100 * comm / step:.0f}% of the step is exposed communication, most "
                         f"in {worst[:-2]} over {groups[dim]['link']})")
        offload = br.get("offload_s", 0.0) + (br["optimizer_s"] if self.plans[0].offload != "none" else 0.0)
        if offload > 0.1 * step:
            binds.append(f"offload ({100 * offload / step:.0f}% of the step: the host optimizer step and "
                         f"{self.plans[0].offload} traffic the compute does not hide)")
        if br["recompute_s"] > 0.05 * step:
            binds.append(f"recomputation ({100 * br['recompute_s'] / step:.0f}% of the step) buys the memory")
        lines.append("What binds: " + ("; ".join(binds) if binds else "compute (little bubble, communication "
                                                                         "hidden, memory to spare)"))
        merged: dict[Layout, list[str]] = {}
        for what, alt in sorted(self.runners_up.items(), key=lambda kv: kv[1].step_time_s):
            merged.setdefault(alt.layout, []).append(what)
        for lay_alt, labels in list(merged.items())[:EXPLAIN_ALTERNATIVES]:
            alt = self.runners_up[labels[0]]
            gap = alt.step_time_s / step - 1
            lines.append(f"Best with {', '.join(labels)}: {lay_alt.short()}  {alt.step_time_s:.3f} s/step "
                         f"({100 * gap:+.1f}%)")
        if self.pins:
            lines.append("Pinned: " + ", ".join(f"{k}={v}" for k, v in self.pins.items()))
        lines += self.validation()["text"]
        return "\n".join(lines)


# --------------------------------------------------------------- enumeration
def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _normalise_pins(pins: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (pins or {}).items():
        if v is None:
            continue
        if k not in PIN_KEYS:
            raise ConfigError(f"unknown pin {k!r}; pins are {', '.join(PIN_KEYS)}")
        if k in CHOICE_FIELDS:
            if v not in CHOICE_FIELDS[k]:
                raise ConfigError(f"{k}={v!r}: must be one of {', '.join(CHOICE_FIELDS[k])}")
        else:
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{k}={v!r}: must be an integer") from None
            if v < 1:
                raise ConfigError(f"{k}={v}: must be >= 1")
        out[k] = v
    return out


class _Space:
    """The valid values of each dimension for one request and its pins."""

    def __init__(self, req: Request, pins: dict[str, Any]):
        self.req, self.pins = req, pins
        model = req.model
        r = req.system.ranks_per_node
        self.world = req.world

        def pinned(name: str, options: list) -> list:
            return [pins[name]] if name in pins else options

        # tp also splits the vocabulary (vocabulary-parallel embedding and loss)
        divides_model = [t for t in _divisors(r) if model.n_heads % t == 0 and model.n_kv_heads % t == 0
                         and model.d_ff % t == 0 and (not model.is_moe or model.moe_d_ff % t == 0)
                         and tp_supported(model, t)]
        self.tps = pinned("tp", divides_model)
        cps = [1] + [c for c in (2, 4, 8, 16) if req.seq_len // c >= MIN_TOKENS_PER_CP_RANK]
        # only what the trainer implements (topology.support); the cost model itself can cost cp > 1
        self.cps = pinned("cp", [c for c in cps if (req.seq_len % (2 * c) == 0 or c == 1) and c in SUPPORTED_CP])
        self.eps = [1] if not model.is_moe else _divisors(model.n_experts)
        if "ep" in pins:
            self.eps = [pins["ep"]]
        self.mbss = pinned("mbs", [1, 2, 4, 8, 16, 32, 64])
        self.recomputes = pinned("recompute", list(RECOMPUTE_MODES))
        self.shardings = pinned("sharding", list(SHARDING_MODES))

    def pps(self, tp: int, cp: int) -> list[int]:
        rest = self.world // (tp * cp)
        if self.world % (tp * cp):
            return []
        # a tied embedding/LM head cannot live on two pipeline stages
        options = [p for p in _divisors(rest) if p <= self.req.model.n_layers
                   and (p == 1 or pipeline_supported(self.req.model))]
        if "pp" in self.pins:
            options = [p for p in options if p == self.pins["pp"]]
        if "dp" in self.pins:
            options = [p for p in options if rest // p == self.pins["dp"]]
        return options

    def schedules(self, pp: int) -> list[tuple[str, int]]:
        n_layers = self.req.model.n_layers
        if pp == 1:
            opts = [(self.pins.get("schedule", "1f1b"), 1)]
        else:
            opts = [("gpipe", 1), ("1f1b", 1)]
            opts += [("interleaved1f1b", v) for v in INTERLEAVE_CHOICES if pp * v <= n_layers]
            vpp_pin = self.pins.get("vpp", 1)
            if vpp_pin > 1 and vpp_pin not in INTERLEAVE_CHOICES and pp * vpp_pin <= n_layers:
                opts.append(("interleaved1f1b", vpp_pin))
            if 2 * pp <= n_layers:
                opts.append(("zbv", 2))
            if "schedule" in self.pins:
                opts = [o for o in opts if o[0] == self.pins["schedule"]]
        if "vpp" in self.pins:
            opts = [o for o in opts if o[1] == self.pins["vpp"]]
        return opts

    def splits(self, dp: int, sharding: str, cp: int, ep: int) -> list[tuple[int, int]]:
        """(dp_replicate, dp_shard) pairs valid for this sharding mode and ep."""
        pins = self.pins
        out = []
        for dr in _divisors(dp):
            ds = dp // dr
            if "dp_replicate" in pins and dr != pins["dp_replicate"]:
                continue
            if "dp_shard" in pins and ds != pins["dp_shard"]:
                continue
            if sharding == "none" and ds != 1:
                continue
            if sharding != "none" and ds * cp == 1 and "sharding" not in pins:
                continue  # a sharding group of one is the unsharded layout
            shard_dims = ds * cp
            if ep > 1 and shard_dims % ep and ep % shard_dims:
                continue  # expert groups must nest with the sharding group (see costmodel.dp_groups)
            out.append((dr, ds))
        return out


def _layout(tp, cp, pp, vpp, schedule, ep, mbs, recompute, sharding, dr, ds) -> Layout:
    return Layout(tp=tp, pp=pp, vpp=vpp, dp_replicate=dr, dp_shard=ds, ep=ep, cp=cp, mbs=mbs,
                  schedule=schedule, recompute=recompute, sharding=sharding)


@dataclass
class _Search:
    candidates: int = 0
    feasible: int = 0
    evaluated: int = 0
    best: list = field(default_factory=list)  # heap of (-step, seq, layout args)
    counter: int = 0
    min_memory: float = math.inf
    min_memory_args: tuple | None = None
    alternatives: dict = field(default_factory=dict)  # label -> (step, args)


def _offload_fits(req: Request, st, g, sharding: str) -> bool:
    """Whether the state an offloading layout moves off the device fits the node's host memory / NVMe
    (Estimate.fits' second half; it also grows with dp_replicate, so the bisection stays valid)."""
    mem, _ = memory_breakdown(req, st, g, sharding)
    return mem["offloaded_per_node"] <= OFFLOAD_USABLE * mem["offload_capacity"]


def _search(req: Request, pins: dict[str, Any], top: int, track_alternatives: bool) -> _Search:
    space = _Space(req, pins)
    model = req.model
    capacity = req.system.node.device.memory_gib * GIB
    reserved = req.system.node.device.reserved_gib * GIB
    out = _Search()
    heap = out.best
    kth = math.inf
    batch = req.global_batch
    is_moe = model.is_moe
    offloading = req.offload != "none"
    groups_cache: dict = {}
    for tp in space.tps:
        for cp in space.cps:
            if req.seq_len % (2 * cp) and cp > 1 or (req.seq_len // cp) % tp:
                continue
            for pp in space.pps(tp, cp):
                dp = req.world // (tp * cp * pp)
                for schedule, vpp in space.schedules(pp):
                    for ep in space.eps:
                        if (dp * cp) % ep or ep > 1 and (not is_moe or model.n_experts % ep):
                            continue
                        key = (tp, cp, ep, dp)
                        split_cache = groups_cache.get(key)
                        if split_cache is None:
                            split_cache = groups_cache[key] = {
                                sh: [(dr, ds, dp_groups(req, tp, cp, ep, sh, dr, ds))
                                     for dr, ds in space.splits(dp, sh, cp, ep)]
                                for sh in space.shardings}
                        for mbs in space.mbss:
                            if batch % (mbs * dp):
                                continue
                            m = batch // (mbs * dp)
                            if pp > 1 and m < pp or schedule == "interleaved1f1b" and m % pp:
                                continue
                            fitted: set = set()  # (sharding, dr) that fit with a cheaper recompute mode
                            n_splits = sum(len(v) for v in split_cache.values())
                            modes = structures(req, tp, cp, ep, mbs, pp, vpp, schedule, space.recomputes)
                            for recompute in space.recomputes:
                                if len(fitted) == n_splits and not track_alternatives:
                                    # everything fit with less recomputation: feasible, and slower than that
                                    out.candidates += n_splits
                                    out.feasible += n_splits
                                    continue
                                st = modes[recompute]
                                for sharding in space.shardings:
                                    splits = split_cache[sharding]
                                    if not splits:
                                        continue
                                    out.candidates += len(splits)
                                    # Peak memory grows with dp_replicate (fewer shards): find where it
                                    # stops fitting by bisection.
                                    terms = st.mem_terms
                                    lo, hi = 0, len(splits)
                                    while lo < hi:
                                        mid = (lo + hi) // 2
                                        g = splits[mid][2]
                                        bd, bx, ga = g.bytes_dense, g.bytes_expert, g.gather
                                        peak = reserved
                                        for pd, px, unit, acts in terms:
                                            v = pd * bd + px * bx + ga * unit + acts + reserved
                                            if v > peak:  # noqa: PLR1730 - max() costs a call here
                                                peak = v
                                        if peak > capacity or offloading and not _offload_fits(req, st, g, sharding):
                                            hi = mid
                                        else:
                                            lo = mid + 1
                                    fit = lo
                                    out.feasible += fit
                                    if fit < len(splits) and not out.feasible:  # nearest miss: only if none fit
                                        dr, ds, g = splits[fit]
                                        peak = peak_memory_bytes(st, g, reserved)[0]
                                        if peak < out.min_memory:
                                            out.min_memory = peak
                                            out.min_memory_args = (tp, cp, pp, vpp, schedule, ep, mbs, recompute,
                                                                   sharding, dr, ds)
                                    if fit == 0:
                                        continue
                                    if st.time_lower_bound >= kth and not track_alternatives:
                                        fitted.update((sharding, sp[0]) for sp in splits[:fit])
                                        continue
                                    for dr, ds, g in splits[:fit]:
                                        if (sharding, dr) in fitted and not track_alternatives:
                                            continue  # fits with less recomputation, which is faster
                                        fitted.add((sharding, dr))
                                        out.evaluated += 1
                                        step, _ = sharded_cost(req, st, g, sharding)
                                        args = (tp, cp, pp, vpp, schedule, ep, mbs, recompute, sharding, dr, ds)
                                        if track_alternatives:
                                            _note_alternatives(out.alternatives, step, args)
                                        if len(heap) < top:
                                            out.counter += 1
                                            heapq.heappush(heap, (-step, out.counter, args))
                                        elif step < -heap[0][0]:
                                            out.counter += 1
                                            heapq.heapreplace(heap, (-step, out.counter, args))
                                        if len(heap) == top:
                                            kth = -heap[0][0]
    return out


def _note_alternatives(alts: dict, step: float, args: tuple) -> None:
    tp, _, pp, _, schedule, ep, mbs, recompute, sharding, _, _ = args
    labels = [f"tp={tp}", "no pipeline" if pp == 1 else f"schedule={schedule}", f"sharding={sharding}",
              f"recompute={recompute}", f"ep={ep}", f"mbs={mbs}"]
    for label in labels:
        if label not in alts or step < alts[label][0]:
            alts[label] = (step, args)


# ----------------------------------------------------------------- the API
def resolve_system(name_or_path: str) -> System:
    """A preset, a YAML/JSON file, or "auto" (discover the node this runs on)."""
    if name_or_path == "auto":
        from .discovery import auto_system

        return auto_system()
    return load_system(name_or_path)


def _check_request(model: ModelConfig, system: System, nodes: int, global_batch: int, seq_len: int) -> None:
    if nodes < 1:
        raise ConfigError(f"nodes={nodes}: must be >= 1")
    if nodes > system.max_nodes:
        hint = " (a single machine; use a multi-node system such as dgx-h100)" if system.max_nodes == 1 else ""
        raise ConfigError(f"system {system.name} has at most {system.max_nodes} node(s){hint}; got --nodes {nodes}")
    if global_batch < 1:
        raise ConfigError(f"global_batch={global_batch}: must be >= 1")
    if seq_len < 1 or seq_len > model.max_seq_len:
        raise ConfigError(f"seq_len={seq_len}: must be between 1 and the model's max_seq_len={model.max_seq_len}")


def plan(model: ModelConfig | str, system: System | str, nodes: int, global_batch: int, seq_len: int,
         pins: dict[str, Any] | None = None, top: int = 5, hosts: list[str] | None = None,
         explain: bool = False, offload: str | None = None, nvme_path: str | None = None) -> PlanResult:
    """Search layouts for ``model`` on ``nodes`` x ``system``; the fastest ``top`` that fit, best first.

    ``offload``: None searches without offload and, only when nothing fits, with it (the result
    says why); "none" never offloads; "cpu"/"nvme" search only that offload."""
    if isinstance(model, str):
        model = resolve_model(model)
    if isinstance(system, str):
        system = resolve_system(system)
    _check_request(model, system, nodes, global_batch, seq_len)
    if top < 1:
        raise ConfigError(f"top={top}: must be >= 1")
    pins = _normalise_pins(pins)
    if pins.get("cp", 1) not in SUPPORTED_CP:
        check_supported(Layout(cp=pins["cp"]), model)
    if offload not in (None, *OFFLOADS):
        raise ConfigError(f"offload={offload!r}: must be one of {', '.join(OFFLOADS)}")
    req = Request(model, system, nodes, global_batch, seq_len)
    t0 = time.perf_counter()
    if offload in ("cpu", "nvme"):
        found = _Search()
    else:
        found = _search(req, pins, top, track_alternatives=explain)
        if found.candidates == 0:
            _explain_empty(req, pins)
    if not found.best and offload != "none":
        offloaded = _offload_search(req, pins, top, offload, nvme_path, hosts, t0, found)
        if offloaded is not None:
            return offloaded
    seconds = time.perf_counter() - t0
    ranked = sorted(found.best, key=lambda item: -item[0])
    plans = []
    for _, _, args in ranked:
        est = estimate(req, _layout(*args))  # validates with topology.layout's rules as well
        plans.append(Plan(est, place(est.layout, system, nodes, hosts)))
    result = PlanResult(req, plans, found.candidates, found.feasible, found.evaluated, seconds, pins)
    if plans and explain:
        best = plans[0].estimate.layout
        for label, (_, args) in sorted(found.alternatives.items()):
            alt = _layout(*args)
            if alt != best and not _label_matches(label, best):
                result.runners_up[label] = estimate(req, alt)
    if not plans:
        if found.min_memory_args is not None:
            result.nearest_miss = estimate(req, _layout(*found.min_memory_args))
        result.advice = _advice(req, pins, result.nearest_miss)
    return result


def _offload_search(req: Request, pins: dict[str, Any], top: int, offload: str | None, nvme_path: str | None,
                    hosts: list[str] | None, t0: float, plain: _Search) -> PlanResult | None:
    """The fastest plans with parameters, gradients and optimizer state off the device; None if none fit.

    Each (offload, engine) the trainer supports is searched with its own rules: zero3 always,
    DeepSpeed for data parallelism only (topology.support)."""
    # Unasked, offload only what `alphaexa train` runs; asked, any engine that can do it.
    offloads = [offload] if offload in ("cpu", "nvme") else [o for o in ("cpu", "nvme")
                                                              if "deepspeed" in TRAINER_ENGINES or o == "cpu"]
    node = req.system.node
    candidates: list[Plan] = []
    searched = _Search()
    for off in offloads:
        if not node.pcie_gbps or not node.host_memory_gbps or off == "nvme" and not node.nvme_gbps:
            continue  # the catalogue does not know this node's offload path
        engines = ("native", "deepspeed") if off == "cpu" else ("deepspeed",)
        for engine in engines if offload else [e for e in engines if e in TRAINER_ENGINES]:
            engine_pins = {**pins, "sharding": "zero3"}
            if engine == "deepspeed":
                engine_pins.update(tp=1, pp=1, cp=1, ep=1, dp_replicate=1)
            if any(pins.get(k, v) != v for k, v in engine_pins.items()):
                continue  # the user's pins rule this engine out
            sub = Request(req.model, req.system, req.nodes, req.global_batch, req.seq_len, offload=off, engine=engine)
            found = _search(sub, engine_pins, top, track_alternatives=False)
            searched.candidates += found.candidates
            searched.feasible += found.feasible
            searched.evaluated += found.evaluated
            for _, _, args in found.best:
                est = estimate(sub, _layout(*args))
                if est.fits and not unsupported(est.layout, req.model, engine=engine, offload=off):
                    candidates.append(Plan(est, place(est.layout, req.system, req.nodes, hosts), engine, off,
                                           nvme_path if off == "nvme" else None))
    if not candidates:
        return None
    candidates.sort(key=lambda p: p.estimate.step_time_s)
    plans = candidates[:top]
    result = PlanResult(req, plans, plain.candidates + searched.candidates, searched.feasible,
                        plain.evaluated + searched.evaluated, time.perf_counter() - t0, pins)
    result.offload_reason = _offload_reason(req, pins, plans[0], offload, plain)
    return result


def _offload_reason(req: Request, pins: dict[str, Any], best: Plan, offload: str | None, plain: _Search) -> str:
    mem = best.estimate.memory
    where = "host memory" if best.offload == "cpu" else f"NVMe ({best.nvme_path or 'set parallel.nvme_path'})"
    moved = (f"with offload={best.offload} ({best.engine} engine) the sharded parameters, gradients and optimizer "
             f"state, {mem['offloaded_per_node']:.0f} GiB per node, live in {where} "
             f"({mem['offload_capacity']:.0f} GiB), the device keeps {mem['total']:.1f} of "
             f"{mem['capacity']:.0f} GiB, and the step pays "
             f"{best.estimate.breakdown['optimizer_s']:.2f} s of host optimizer and "
             f"{best.estimate.breakdown['offload_s']:.2f} s of exposed PCIe/NVMe traffic")
    if offload in ("cpu", "nvme"):
        return f"Offload pinned: {moved}."
    if plain.min_memory_args is not None:
        lean = estimate(req, _layout(*plain.min_memory_args))
        need = (f"the leanest layout ({lean.layout.short()}) needs {lean.memory['total']:.1f} GiB per device, "
                f"{lean.memory['total'] - lean.memory['capacity']:.1f} over the {lean.memory['capacity']:.0f} GiB")
    else:
        need = "no layout is valid without it"
    return f"Offload because nothing fits without it: {need}; {moved}."


def _label_matches(label: str, lay: Layout) -> bool:
    key, _, value = label.partition("=")
    if label == "no pipeline":
        return lay.pp == 1
    return key in Layout.__dataclass_fields__ and str(getattr(lay, key)) == value


def _explain_empty(req: Request, pins: dict[str, Any]) -> None:
    """No layout passes the divisibility rules: report the first rule the pins (or the request) break."""
    if pins:
        layout_pins = {k: v for k, v in pins.items() if k != "dp"}
        if "dp" in pins and "dp_replicate" not in pins and "dp_shard" not in pins:
            layout_pins["dp_replicate" if pins.get("sharding") == "none" else "dp_shard"] = pins["dp"]
        probe = Layout.from_dict(layout_pins, where="pins")
        probe.validate(model=req.model, seq_len=req.seq_len)  # the model's rules read best, so they come first
        probe.validate(world=req.world, model=req.model, global_batch=req.global_batch, seq_len=req.seq_len)
    raise ConfigError(
        f"no layout of {req.world} ranks ({req.nodes} x {req.system.ranks_per_node}) satisfies the divisibility "
        f"rules for global_batch={req.global_batch}, seq_len={req.seq_len}"
        + (f" and pins {', '.join(f'{k}={v}' for k, v in pins.items())}" if pins else "")
        + f"; the batch must split into mbs * dp_replicate * dp_shard with dp = {req.world} / (tp*cp*pp)")


def _min_memory(req: Request, pins: dict[str, Any]) -> float:
    """Least peak memory (GiB) of any layout under ``pins`` (memory only, no timing)."""
    found = _search(req, pins, 1, track_alternatives=False)
    if found.feasible:
        return 0.0
    return found.min_memory / GIB if found.min_memory_args else math.inf


def _advice(req: Request, pins: dict[str, Any], nearest: Estimate | None) -> list[str]:
    cap = req.system.node.device.memory_gib
    lines = []
    if nearest is None:
        return [f"no layout of {req.world} ranks is valid for global_batch={req.global_batch}"]
    mem = nearest.memory
    lines.append(f"Does not fit: the leanest layout ({nearest.layout.short()}) needs {mem['total']:.1f} GiB per "
                 f"device on pipeline stage {nearest.worst_stage} (params {mem['params']:.1f}, grads "
                 f"{mem['grads']:.1f}, optimizer {mem['optimizer']:.1f}, activations {mem['activations']:.1f}, "
                 f"overhead {mem['overhead']:.1f}) - {mem['total'] - cap:.1f} GiB over the {cap:.0f} GiB capacity.")
    relaxed = {k: v for k, v in pins.items() if k not in ("recompute", "sharding", "mbs")}
    if relaxed != pins and _min_memory(req, relaxed) == 0.0:
        freed = ", ".join(f"{k}={pins[k]}" for k in ("recompute", "sharding", "mbs") if k in pins)
        lines.append(f"It fits without pinning {freed} (try --recompute full --sharding zero3 --mbs 1).")
    if req.system.max_nodes > req.nodes:
        n = req.nodes * 2
        # beyond this many ranks every layout has dp*mbs > global_batch: nothing valid to find
        useful = req.system.ranks_per_node * 16 * req.model.n_layers * req.global_batch
        while n <= req.system.max_nodes and n * req.system.ranks_per_node <= useful:
            bigger = Request(req.model, req.system, n, req.global_batch, req.seq_len)
            if _min_memory(bigger, pins) == 0.0:
                lines.append(f"It fits on {n} nodes ({n * req.system.ranks_per_node} devices) with the same "
                             f"global batch.")
                break
            n *= 2
        else:
            lines.append(f"No node count up to {min(n // 2, req.system.max_nodes)} fits with these pins and global "
                         f"batch {req.global_batch}; a larger global batch allows more data/pipeline ranks.")
    return lines
