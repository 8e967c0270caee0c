"""AlphaExa against a hand-written PyTorch loop and torchtitan, side by side on one GPU.

    python3 bench/vs_peers.py [OUT_DIR] [--sections dense,moe] [--budget-s 470] [--warmup 5 --timed 15]
                              [--ablations compile-off,no-fused-ce,...] [--alphaexa-set section.key=value ...]
    python3 bench/vs_peers.py OUT_DIR --sections dense --kinds alphaexa --ablations compile-off,...  # levers
    python3 bench/vs_peers.py OUT_DIR --sections long,attention     # the long-sequence and kernel sections

Every contender trains the same model shape with the same tokens per step, bf16
compute with fp32 master weights and AdamW, each in its own subprocess (fresh
CUDA context, its own peak-memory figures, a timeout of its own: one failure
loses nothing else).  Sections, in the order they run:

* dense: the ``1b`` preset, 8 x 2048 tokens per step: a hand-written loop
  (embedding, RMSNorm, GQA attention through SDPA, SwiGLU, LM head, fused AdamW,
  bf16 autocast) eager and under ``torch.compile``; torchtitan's own trainer and
  Llama-3 model (``bench/titan_configs.py``: torchtitan 0.2.x, the newest release
  that imports on torch 2.11; compile on, SDPA, no activation checkpointing); ``alphaexa
  train`` with its defaults, and one run per ``--ablations`` lever turned the other way.
* moe: ``1b-moe`` and a Mixtral-like shape (every block MoE, 8 experts top-2),
  torchtitan's MoE family (Qwen3 blocks at this shape) against ``alphaexa train``.
* long: ``1b`` at 8k, 32k and 128k tokens per sequence with full recompute, and
  32k with a 4096-token sliding window (``model.sliding_window``).
* attention: forward + backward of every attention kernel the registry has on
  this device at the 1b shape, each first checked against the math reference.

Where torchtitan's trainer cannot run (it does not import on this torch, or there is no
GPU: ``--smoke``), its rows train torchtitan's own model classes in the bench's loop
instead (compiled per block, fused AdamW, bf16 autocast); each torchtitan row says in
``titan_mode`` which of the two ran.

Figures: tokens/s = tokens per step / mean step time over the timed steps (after
the warm-up, which includes compilation); MFU = tokens/s x FLOPs per token (one
formula, ``train_flops_per_token`` below, for every contender) / the GPU's dense
bf16 peak; peak memory = the most memory allocated by tensors during a timed step
(torchtitan: its ``max_active``), plus the reserved peak where the contender
reports it.  The ratio column is AlphaExa's tokens/s over each peer's.
``--budget-s`` bounds the whole run: each contender runs under what is left of it (or its own
timeout, if shorter); one that would start with less than ``MIN_START_S`` left is skipped and
reported as skipped (a warm 1b contender needs ~40-70 s, a cold compile of the loop ~110 s).  AlphaExa runs save no checkpoint
(``checkpoint.enabled=false``) and their run directories are deleted after each run.
JSON goes to OUT_DIR/vs_peers.json (OUT_DIR defaults to $OUT, else ./vs-peers-out),
the contenders' log tails to OUT_DIR/vs_peers.log.  torchtitan and its needs come
from wheels (see docs/performance.md); without them its rows say so and the rest runs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULT_TAG = "VS_PEERS_RESULT "
LONG_MAX_SEQ = 131072

# name -> (preset, model field overrides)
SHAPES: dict[str, tuple[str, dict]] = {
    "1b": ("1b", {}),
    "1b-moe": ("1b-moe", {}),
    # Mixtral's layout (every block MoE, 8 experts, top-2, GQA 4:1, expert width 2.75 d) at 1b-moe's width.
    "mixtral-like": ("1b-moe", {"n_layers": 12, "n_heads": 16, "n_kv_heads": 4, "moe_every": 1, "moe_d_ff": 5632}),
    # --smoke: the same plumbing on CPU at the debug preset's size.
    "smoke": ("debug", {"moe_every": 0, "d_ff": 256}),  # Llama-3's derived FFN width at d_model 64
    "smoke-moe": ("debug", {}),
}
SMOKE_SHAPE = {"1b": "smoke", "1b-moe": "smoke-moe", "mixtral-like": "smoke-moe"}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Named override sets, each one lever of docs/performance.md turned the other way (the defaults
# are what a user gets: compile on CUDA over the whole model, fused loss, no FSDP on one rank),
# or a lever that is not on by default turned on.
# Ablations that set an environment variable of the AlphaExa run (on top of their sets): torch's inductor reads
# these when it is imported, so they take a fresh process, which every contender is.
ABLATION_ENV: dict[str, dict[str, str]] = {
    "coordinate-descent": {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"},
}
ABLATIONS: dict[str, list[str]] = {
    "compile-off": ["train.compile=false"],
    "compile-per-block": ["train.compile_scope=block"],
    "no-fused-ce": ["train.fused_loss=false"],
    "fsdp-on-1-rank": ["parallel.fsdp_on_one_rank=true"],
    "recompute-selective": ["parallel.recompute=selective"],
    "no-overlap": ["train.overlap_steps=false"],  # read each step's figures before launching the next
    "no-clip-fold": ["train.clip_in_optimizer=false"],  # scale every gradient before the fused step
    "no-bf16-weights": ["train.bf16_weights=false"],  # fp32 weights cast by autocast (auto turns bf16 weights on)
    "bf16-weights": ["train.bf16_weights=true"],  # where auto would not turn them on (auto does on one compiled GPU)
    # levers not on by default yet: each turned on
    "fused-projections": ["train.fused_projections=true"],
    "cudagraphs": ["train.compile_mode=reduce-overhead"],
    "max-autotune": ["train.compile_mode=max-autotune-no-cudagraphs"],  # its GEMM autotuning takes minutes
    "loss-chunk-1024": ["train.loss_chunk_tokens=1024"],
    "loss-chunk-2048": ["train.loss_chunk_tokens=2048"],  # smaller loss temporaries at the forward's peak
    "loss-chunk-4096": ["train.loss_chunk_tokens=4096"],
    "float8": ["train.float8=true"],  # torchao; compare its loss column with the bf16 row's
    "coordinate-descent": [],  # inductor tunes each Triton kernel's block sizes (ABLATION_ENV): the elementwise 18%
    # recompute cheap ops in the backward: a lower activation peak
    "act-budget-1.0": ["train.activation_memory_budget=1.0"],  # save what the min-cut chooses (the default before s11)
    "act-budget-0.9": ["train.activation_memory_budget=0.9"],
    "act-budget-0.95": ["train.activation_memory_budget=0.95"],
    "act-budget-0.98": ["train.activation_memory_budget=0.98"],
    "act-budget-0.9-chunk-2048": ["train.activation_memory_budget=0.9", "train.loss_chunk_tokens=2048"],
}


# max-autotune benchmarks GEMM configurations while it compiles: still compiling after 238 s on the
# H200 (session 4), so it gets longer.
ABLATION_TIMEOUT_S = {"max-autotune": 540, "coordinate-descent": 360}  # both tune kernels while compiling


def ablation_parts(name: str) -> list[str]:
    """The levers of an ablation: ``a+b`` turns both ``a`` and ``b`` the other way in one run."""
    return name.split("+")


def ablation_error(name: str) -> str | None:
    """Why ``name`` is no ablation: an unknown or empty part, or two parts setting one key."""
    parts = ablation_parts(name)
    unknown = [part for part in parts if part not in ABLATIONS]
    if unknown:
        return f"{name}: unknown lever(s) {', '.join(repr(u) for u in unknown)}"
    keys = [kv.split("=", 1)[0] for part in parts for kv in ABLATIONS[part]]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    return f"{name}: its levers set {', '.join(twice)} more than once" if twice else None


def ablation_options(name: str) -> dict:
    """The AlphaExa run's ``sets`` (and ``env``, where a lever needs one) for ablation ``name``."""
    sets: list[str] = []
    env: dict[str, str] = {}
    for part in ablation_parts(name):
        sets += ABLATIONS[part]
        env.update(ABLATION_ENV.get(part, {}))
    return {"sets": sets, **({"env": env} if env else {})}


def ablation_timeout_s(name: str) -> int:
    return max(ABLATION_TIMEOUT_S.get(part, 240) for part in ablation_parts(name))


KINDS = ("loop", "titan", "alphaexa", "attention")
MIN_START_S = 45.0  # a contender that would start with less of --budget-s left is skipped

# --profile-steps: each device kernel goes to the first category whose pattern is found in its
# lower-cased name (attention before GEMM: cuDNN's attention kernels are named after their wgmma).
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("communication", r"nccl|allreduce|all_reduce|alltoall|all_to_all|allgather|reduce_scatter"),
    ("attention bwd", r"(flash|fmha|attn|attention|sdpa).*(bwd|bprop|backward|cutlassb|dq_dk)"),
    ("attention fwd", r"flash|fmha|attn|attention|sdpa"),
    # ... and train.bf16_weights' compiled AdamW update, an inductor kernel fusing lerp (the first moment) and sqrt
    ("optimizer + clip", r"adam|multi_tensor|foreach|^triton_poi_fused.*lerp.*sqrt"),
    # inductor's pointwise/reduction kernels (triton_poi_, triton_per_, triton_red_) are named after the ops they
    # fuse: "triton_poi_fused__grouped_mm__to_copy" casts weights for a grouped GEMM, it is no GEMM
    ("GEMM", (r"^(?!triton_(?:poi|per|red)_).*(?:gemm|cutlass|cublas|nvjet|xmma|wgmma|matmul|grouped_mm|triton_tem|"
              r"splitk|\bmm\b|addmm)")),
    ("routing/permute/index/sort", r"topk|sort|radix|scatter|gather|index|cumsum|histogram|bincount|nonzero|unique"),
    ("elementwise/norm", (r"triton_|elementwise|vectorized|reduce|norm|softmax|copy|fill|cast|silu|mul|add|cat|"
                          r"embedding|loss|memset|memcpy|unrolled")),
)
PROFILED = {"loop compile", "alphaexa", "alphaexa 1b-moe", "alphaexa mixtral-like"}  # the contenders --profile-steps profiles


@dataclass
class Contender:
    section: str
    name: str
    kind: str  # one of KINDS
    shape: str
    batch: int
    seq: int
    warmup: int
    timed: int
    timeout_s: int
    options: dict = field(default_factory=dict)
    profile_steps: int = 0  # steps profiled after the timed ones (--profile-steps), not timed


def model_fields(shape: str, seq: int, window: int = 0) -> dict:
    """The model shape every framework is built with (from AlphaExa's preset + overrides)."""
    from topology.presets import get_preset

    preset, overrides = SHAPES[shape]
    cfg = get_preset(preset).replace(**overrides, max_seq_len=max(seq, 2048), sliding_window=window)
    fields = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "n_experts",
              "top_k", "moe_d_ff", "tie_embeddings", "rope_theta", "norm_eps", "sliding_window", "ffn_type",
              "max_seq_len")
    return {"preset": preset, "overrides": overrides, "moe_layers": cfg.moe_layer_indices(),
            **{name: getattr(cfg, name) for name in fields}}


def train_flops_per_token(m: dict, seq: int) -> float:
    """Training FLOPs per token, the same for every contender: 6 x the active matmul parameters
    (attention projections, dense or top-k expert SwiGLU FFNs, router, LM head; no embedding
    lookup) + causal attention scores and values, 12 x q_dim x (mean keys a query sees) per layer."""
    d, q_dim, kv_dim = m["d_model"], m["n_heads"] * m["head_dim"], m["n_kv_heads"] * m["head_dim"]
    attention = d * (q_dim + 2 * kv_dim) + q_dim * d
    dense = 3 * d * m["d_ff"]
    moe = m["top_k"] * 3 * d * m["moe_d_ff"] + d * m["n_experts"]
    n_moe = len(m["moe_layers"])
    matmul = m["n_layers"] * attention + n_moe * moe + (m["n_layers"] - n_moe) * dense + d * m["vocab_size"]
    window = m["sliding_window"]
    visible = window * (1 - window / (2 * seq)) if 0 < window < seq else (seq + 1) / 2
    return 6.0 * matmul + 12.0 * m["n_layers"] * q_dim * visible


# ------------------------------------------------------------------------------ the contenders
SECTIONS = ("dense", "moe", "long", "attention")


def contenders(args) -> list[Contender]:
    """The contenders of ``args.sections``, section by section in the order given (the budget skips the last)."""
    w, t = args.warmup, args.timed
    full = {"sets": ["parallel.recompute=full"]}
    by_section = {
        "dense": [Contender("dense", "loop eager", "loop", "1b", 8, 2048, w, t, 150, {"compile": False}),
                  Contender("dense", "loop compile", "loop", "1b", 8, 2048, w, t, 240, {"compile": True}),
                  Contender("dense", "torchtitan", "titan", "1b", 8, 2048, w, t, 300, {"compile": True}),
                  Contender("dense", "alphaexa", "alphaexa", "1b", 8, 2048, w, t, 240),
                  *(Contender("dense", f"alphaexa {a}", "alphaexa", "1b", 8, 2048, w, t, ablation_timeout_s(a),
                              ablation_options(a))
                    for a in args.ablations)],
        "moe": [Contender("moe", f"{who} {shape}", kind, shape, 8, 2048, w, t, timeout, options)
                for shape in ("1b-moe", "mixtral-like")
                for who, kind, timeout, options in (("torchtitan", "titan", 300, {"compile": True}),
                                                    ("alphaexa", "alphaexa", 240, {}))],
        # Step 1 compiles (each block: full recompute); a 128k step is ~15-20 s of attention on an H200.
        "long": [Contender("long", "alphaexa 8k", "alphaexa", "1b", 2, 8192, 2, 4, 200, full),
                 Contender("long", "alphaexa 32k", "alphaexa", "1b", 1, 32768, 1, 3, 240, full),
                 Contender("long", "alphaexa 128k", "alphaexa", "1b", 1, 131072, 1, 2, 300, full),
                 Contender("long", "alphaexa 32k window 4096", "alphaexa", "1b", 1, 32768, 1, 3, 240,
                           {**full, "window": 4096})],
        "attention": [Contender("attention", "attention kernels", "attention", "1b", 8, 2048, 3, 10, 150)],
    }
    out = [c for section in args.sections.split(",") for c in by_section[section]]
    for c in out:
        c.profile_steps = args.profile_steps if c.name in PROFILED else 0
    if args.only:
        unknown = args.only - {c.name for c in out}
        if unknown:
            raise SystemExit(f"--only: no contender named {', '.join(sorted(unknown))} in sections {args.sections}; "
                             f"there are: {', '.join(c.name for c in out)}")
        out = [c for c in out if c.name in args.only]
    if args.smoke:
        for c in out:
            c.shape, c.batch, c.seq, c.warmup, c.timed = SMOKE_SHAPE[c.shape], 2, min(128, c.seq // 64), 1, 2
            c.options = {**c.options, "compile": False} if "compile" in c.options else c.options
            if "window" in c.options:
                c.options = {**c.options, "window": 32}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=os.environ.get("OUT") or "vs-peers-out")
    parser.add_argument("--sections", default="dense,moe",
                        help="any of dense,moe,long,attention, run in this order")
    parser.add_argument("--budget-s", type=float, default=470.0, help="wall-clock bound of the whole bench")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timed", type=int, default=15)
    parser.add_argument("--ablations", type=lambda s: [a for a in s.split(",") if a], default=[],
                        help=f"extra alphaexa runs on the dense shape, one lever each (a+b: both in one run): "
                             f"{', '.join(ABLATIONS)}")
    parser.add_argument("--kinds", type=lambda s: set(s.split(",")), default=set(KINDS),
                        help=f"run only these kinds of contender: {','.join(KINDS)} (e.g. alphaexa for the ablations)")
    parser.add_argument("--alphaexa-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an override for every alphaexa run (a contender's own settings, e.g. an ablation's "
                             "lever, come after it and win)")
    parser.add_argument("--profile-steps", type=int, default=0, metavar="N",
                        help=f"profile N steps after the timed ones of {', '.join(sorted(PROFILED))}: top kernels, "
                             "their categories and the GPU's idle share (0: no profile)")
    parser.add_argument("--trace", action="store_true",
                        help="with --profile-steps: also write each profiled contender's timeline to "
                             "OUT_DIR/trace-NAME.json.gz (chrome://tracing, Perfetto)")
    parser.add_argument("--only", type=lambda s: {n.strip() for n in s.split(",") if n.strip()}, default=set(),
                        metavar="NAME,NAME", help="run only the contenders of these names (as the tables print them)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the plumbing on CPU: the debug preset's size, 1 + 2 steps (figures mean nothing)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(json.loads(args.worker))
    unknown_sections = set(args.sections.split(",")) - set(SECTIONS)
    if unknown_sections:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown_sections))}; known: {', '.join(SECTIONS)}")
    if args.kinds - set(KINDS):
        parser.error(f"unknown kind(s) {', '.join(sorted(args.kinds - set(KINDS)))}; known: {', '.join(KINDS)}")
    bad = [why for why in map(ablation_error, args.ablations) if why]
    if bad:
        parser.error(f"bad ablation(s): {'; '.join(bad)}; known levers (join them with +): {', '.join(ABLATIONS)}")
    if args.smoke:
        args.warmup, args.timed = 1, 2

    started = time.monotonic()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vs-peers-"))
    env_info = _environment()
    print(json.dumps(env_info), flush=True)
    rows, logs = [], []
    for c in (c for c in contenders(args) if c.kind in args.kinds):
        left = args.budget_s - (time.monotonic() - started)
        if left < MIN_START_S:
            rows.append({**asdict(c), "status": f"skipped: {left:.0f} s of the budget left"})
            continue
        spec = {**asdict(c), "scratch": str(scratch), "alphaexa_sets": args.alphaexa_set, "out_dir": str(out_dir.resolve()),
                "trace_dir": str(out_dir.resolve()) if args.trace else None}
        row, log = _run_contender(c, spec, min(c.timeout_s, left))
        rows.append(row)
        logs.append(f"===== {c.section} / {c.name}: {row['status']}\n{log[-6000:]}\n")
        print(f"[{time.monotonic() - started:5.0f} s] {c.section:<9} {c.name:<26} {_short(row)}", flush=True)
        result = _write_results(out_dir, env_info, rows, logs, started, args)  # so far: a killed call keeps it
    result = _write_results(out_dir, env_info, rows, logs, started, args)
    _print_tables(result)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _write_results(out_dir: Path, env_info: dict, rows: list[dict], logs: list[str], started: float, args) -> dict:
    result = {"environment": env_info, "rows": rows, "ratios": _ratios(rows),
              "wall_s": time.monotonic() - started, "steps": {"warmup": args.warmup, "timed": args.timed}}
    (out_dir / "vs_peers.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "vs_peers.log").write_text("".join(logs))
    return result


def _run_contender(c: Contender, spec: dict, timeout: float) -> tuple[dict, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", **c.options.get("env", {})}
    begun = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        log, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        log = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        return {**asdict(c), "status": f"timeout after {timeout:.0f} s", "wall_s": timeout}, log
    row = {**asdict(c), "wall_s": time.monotonic() - begun}
    found = [line[len(RESULT_TAG):] for line in log.splitlines() if line.startswith(RESULT_TAG)]
    if code == 0 and found:
        row.update(json.loads(found[-1]), status="ok")
    else:
        last = [line for line in log.strip().splitlines() if line.strip()][-1:] or ["no output"]
        row["status"] = f"failed (exit {code}): {last[0][:200]}"
    return row, log


# ------------------------------------------------------------------------------ workers
TRACE_PATH: Path | None = None  # --trace: where the worker's profiler writes its timeline


def _worker(spec: dict) -> int:
    global TRACE_PATH
    if spec.get("trace_dir"):
        TRACE_PATH = Path(spec["trace_dir"]) / f"trace-{_slug(spec['name'])}.json.gz"
    window = spec["options"].get("window", 0)
    m = model_fields(spec["shape"], spec["seq"], window)
    tokens = spec["batch"] * spec["seq"]
    kind = spec["kind"]
    if kind == "attention":
        print(RESULT_TAG + json.dumps({"kernels": _attention_kernels(m, spec)}), flush=True)
        return 0
    figures = {"loop": _loop, "titan": _titan, "alphaexa": _alphaexa}[kind](spec, m)
    times = figures.pop("step_times")
    step_s = statistics.fmean(times)
    # every timed step's seconds: a mean 3-4% apart between calls (session 17) is read against these
    figures.update(step_times_s=[round(t, 6) for t in times],
                   step_s_min=min(times), step_s_spread=(max(times) - min(times)) / step_s)
    tokens_per_s = tokens / step_s
    flops = train_flops_per_token(m, spec["seq"])
    peak = _peak_flops(torch.cuda.get_device_name()) if DEVICE == "cuda" else None
    figures.update(tokens_per_step=tokens, step_s=step_s, tokens_per_s=tokens_per_s,
                   flops_per_token=flops, tflops=tokens_per_s * flops / 1e12,
                   mfu=tokens_per_s * flops / peak if peak else None)
    print(RESULT_TAG + json.dumps(figures), flush=True)
    return 0


def _peak_flops(device_name: str) -> float | None:
    from backends.device import peak_bf16_flops_for

    return peak_bf16_flops_for(device_name)


def _loop(spec: dict, m: dict) -> dict:
    """The hand-written reference: what a user writes without a framework."""
    torch.manual_seed(0)
    model = HandWrittenLM(m).to(DEVICE)
    return _bench_loop(model, spec, m, compile_whole=spec["options"]["compile"])


def _bench_loop(model: nn.Module, spec: dict, m: dict, *, compile_whole: bool = False) -> dict:
    """Train ``model`` (token ids -> logits) with bf16 autocast, fp32 cross-entropy, clipping and
    fused AdamW; ``compile_whole``: ``torch.compile`` over model + loss.  Times the steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=DEVICE == "cuda")

    def loss_of(inputs, targets):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    loss_fn = torch.compile(loss_of) if compile_whole else loss_of
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def step() -> torch.Tensor:
        batch = torch.randint(0, m["vocab_size"], (spec["batch"], spec["seq"] + 1), device=DEVICE, generator=generator)
        loss = loss_fn(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(spec["warmup"]):
        step()
    _synchronize()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(spec["timed"]):
        begun = time.perf_counter()
        losses.append(step())
        _synchronize()
        times.append(time.perf_counter() - begun)
    memory = ({"peak_gib": torch.cuda.max_memory_allocated() / 2**30,
               "reserved_gib": torch.cuda.max_memory_reserved() / 2**30} if DEVICE == "cuda" else {"peak_gib": 0.0})
    figures = {"step_times": times, **memory, "loss": float(losses[-1])}
    if spec.get("profile_steps"):
        profiler = _StepProfiler(spec["profile_steps"])
        profiler.start()
        for _ in range(spec["profile_steps"]):
            step()
        figures["profile"] = profiler.stop()
    return figures


def _synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class _StepProfiler:
    """``torch.profiler`` over a few steps: the device's kernels (on CPU, for --smoke, the host's
    operators, which nest, so their shares overlap), each kernel's and category's share of the
    profiled wall time, and the share of that time no kernel ran (the GPU idle)."""

    def __init__(self, steps: int):
        from torch.profiler import ProfilerActivity, profile

        self.steps = steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        self.profile = profile(activities=activities)

    def start(self) -> None:
        _synchronize()
        self.profile.__enter__()
        self.begun = time.perf_counter()

    def stop(self) -> dict:
        _synchronize()
        wall_ns = (time.perf_counter() - self.begun) * 1e9
        self.profile.__exit__(None, None, None)
        if TRACE_PATH is not None:  # --trace: the whole timeline, for chrome://tracing or Perfetto
            raw = TRACE_PATH.with_suffix("")
            self.profile.export_chrome_trace(str(raw))
            with open(raw, "rb") as source, gzip.open(TRACE_PATH, "wb") as target:
                shutil.copyfileobj(source, target)
            raw.unlink()
        return kernel_summary(self.profile.events(), wall_ns, self.steps)


def kernel_category(name: str) -> str:
    """The first ``PROFILE_CATEGORIES`` entry whose pattern matches a kernel's (or operator's) name."""
    low = name.lower()
    return next((c for c, pattern in PROFILE_CATEGORIES if re.search(pattern, low)), "other")


def kernel_summary(events, wall_ns: float, steps: int, top: int = 40) -> dict:
    """Top kernels (``top`` in the JSON, the first 15 printed) and categories (``PROFILE_CATEGORIES``) by
    their share of ``wall_ns``, and the idle share."""

    from torch.autograd import DeviceType

    # The profiler's public events (FunctionEvent): on CUDA its device events are the kernels,
    # copies and memsets, with their device time ranges in microseconds.
    wanted = DeviceType.CUDA if DEVICE == "cuda" else DeviceType.CPU
    spans, per_name = [], {}
    # Host events that enter a compiled graph (forward: "CompiledFunction", backward:
    # "CompiledFunctionBackward"): one each per step for a whole-model compile; more means the
    # model's graph is split (graph breaks, or per-block compile).
    compiled = {"CompiledFunction": 0, "CompiledFunctionBackward": 0}
    for e in events:
        if e.device_type == DeviceType.CPU and e.name in compiled:
            compiled[e.name] += 1
        # User annotations (``Optimizer.step#AdamW.step``) span kernels listed in their own right.
        if e.device_type != wanted or getattr(e, "is_user_annotation", False):
            continue
        begin, end = e.time_range.start * 1000, e.time_range.end * 1000
        spans.append((begin, end))
        total = per_name.setdefault(e.name, [0, 0])
        total[0] += end - begin
        total[1] += 1
    busy, reach = 0, None
    for begin, end in sorted(spans):
        if reach is None or begin > reach:
            busy, reach = busy + end - begin, end
        elif end > reach:
            busy, reach = busy + end - reach, end

    categories: dict[str, float] = {}
    for name, (ns, _) in per_name.items():
        categories[kernel_category(name)] = categories.get(kernel_category(name), 0.0) + ns / wall_ns
    ranked = sorted(per_name.items(), key=lambda item: -item[1][0])[:top]
    return {"what": "device kernels" if DEVICE == "cuda" else "host operators (nested: shares overlap)",
            "steps": steps, "step_ms": wall_ns / steps / 1e6, "busy_share": busy / wall_ns,
            "idle_share": max(0.0, 1 - busy / wall_ns),
            "compiled_graphs_per_step": {"forward": compiled["CompiledFunction"] / steps,
                                         "backward": compiled["CompiledFunctionBackward"] / steps},
            "categories": dict(sorted(categories.items(), key=lambda item: -item[1])),
            "kernels": [{"name": name, "category": kernel_category(name), "share": ns / wall_ns,
                         "ms_per_step": ns / steps / 1e6, "calls_per_step": calls / steps}
                        for name, (ns, calls) in ranked]}


class HandWrittenBlock(nn.Module):
    def __init__(self, m: dict):
        super().__init__()
        d, hd = m["d_model"], m["head_dim"]
        self.heads, self.kv_heads, self.head_dim, self.eps = m["n_heads"], m["n_kv_heads"], hd, m["norm_eps"]
        self.attention_norm = nn.Parameter(torch.ones(d))
        self.ffn_norm = nn.Parameter(torch.ones(d))
        self.wq = nn.Linear(d, m["n_heads"] * hd, bias=False)
        self.wkv = nn.Linear(d, 2 * m["n_kv_heads"] * hd, bias=False)
        self.wo = nn.Linear(m["n_heads"] * hd, d, bias=False)
        self.w13 = nn.Linear(d, 2 * m["d_ff"], bias=False)
        self.w2 = nn.Linear(m["d_ff"], d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, s, d = x.shape
        h = F.rms_norm(x, (d,), self.attention_norm, self.eps)
        q = self.wq(h).view(b, s, self.heads, self.head_dim)
        k, v = self.wkv(h).view(b, s, 2, self.kv_heads, self.head_dim).unbind(2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=True)
        x = x + self.wo(o.transpose(1, 2).reshape(b, s, -1))
        up, gate = self.w13(F.rms_norm(x, (d,), self.ffn_norm, self.eps)).chunk(2, dim=-1)
        return x + self.w2(F.silu(gate) * up)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class HandWrittenLM(nn.Module):
    """Embedding, RMSNorm, GQA attention through SDPA with RoPE, SwiGLU, LM head: plain PyTorch."""

    def __init__(self, m: dict):
        super().__init__()
        self.embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.blocks = nn.ModuleList(HandWrittenBlock(m) for _ in range(m["n_layers"]))
        self.norm = nn.Parameter(torch.ones(m["d_model"]))
        self.head = nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        self.eps = m["norm_eps"]
        half = m["head_dim"] // 2
        inv_freq = 1.0 / m["rope_theta"] ** (torch.arange(half, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(m["max_seq_len"], dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        s = tokens.shape[1]
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, self.cos[:s], self.sin[:s])
        return self.head(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower())


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _titan(spec: dict, m: dict) -> dict:
    """torchtitan's own trainer (``torchtitan.train``) on a train spec of bench/titan_configs.py; where
    its trainer cannot run here (it does not import, or no GPU), torchtitan's own model classes at the
    shape, compiled per block as its parallelize does, in the bench's loop.  ``titan_mode`` says which."""
    import torchtitan

    os.environ["VS_PEERS_TITAN"] = json.dumps(m)
    version = getattr(torchtitan, "__version__", "?")
    try:
        from torchtitan.train import Trainer
    except ImportError as e:
        trainer, why = None, f"its trainer does not import here: {type(e).__name__}: {e}"
    else:
        trainer, why = Trainer, "no CUDA device for its trainer"
    from bench import titan_configs

    name = "alphaexa_qwen3" if m["moe_layers"] else "alphaexa_llama3"
    if trainer is not None and DEVICE == "cuda":
        try:
            return {**_titan_trainer(spec, name, trainer), "titan_mode": f"torchtitan {version} trainer"}
        except Exception as e:  # noqa: BLE001 - any failure of its trainer: say so, measure its model
            traceback.print_exc()
            why = f"its trainer failed: {type(e).__name__}: {str(e)[:200]}"
            gc.collect()
            torch.cuda.empty_cache()
    from torchtitan.protocols.train_spec import get_train_spec

    train_spec = get_train_spec(name)
    with torch.device("meta"):
        model = train_spec.model_cls(train_spec.model_args[titan_configs.FLAVOR])
    model.to_empty(device=DEVICE)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    if spec["options"]["compile"]:
        for block in model.layers.values():
            block.compile()
    figures = _bench_loop(model, spec, m)
    return {**figures, "titan_mode": f"torchtitan {version} model classes in the bench loop ({why})"}


def _titan_trainer(spec: dict, name: str, trainer_class) -> dict:
    """What ``torchtitan.train.main`` does, with the arguments passed in (its ConfigManager's
    default arguments are ``sys.argv`` as it was at import: this worker's own)."""
    from torchtitan.config import ConfigManager
    from torchtitan.tools.logging import init_logger

    dump = Path(spec["scratch"]) / f"titan-{spec['shape']}-{spec['seq']}"
    recompute = spec["options"].get("recompute", "none")
    argv = ["--model.name", name, "--model.flavor", "at_shape",
                "--job.dump_folder", str(dump), "--training.local_batch_size", str(spec["batch"]),
                "--training.seq_len", str(spec["seq"]), "--training.steps", str(spec["warmup"] + spec["timed"]),
                "--training.max_norm", "1.0", "--training.mixed_precision_param", "bfloat16",
                "--optimizer.lr", "3e-4", "--optimizer.implementation", "fused", "--lr_scheduler.warmup_steps", "2",
                "--metrics.log_freq", "1", "--metrics.enable_tensorboard",
                "--parallelism.data_parallel_shard_degree", "-1", "--activation_checkpoint.mode", recompute,
                *(["--compile.enable"] if spec["options"]["compile"] else [])]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))
    init_logger()
    trainer = trainer_class(ConfigManager().parse_args(argv))
    try:
        trainer.train()
    finally:
        trainer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    scalars = _tensorboard_scalars(dump)
    timed = {s: v for s, v in scalars["time_metrics/end_to_end(s)"].items() if s > spec["warmup"]}
    if len(timed) < spec["timed"]:
        raise RuntimeError(f"torchtitan logged {len(timed)} timed steps, expected {spec['timed']}")
    active = [v for s, v in scalars["memory/max_active(GiB)"].items() if s > spec["warmup"]]
    reserved = [v for s, v in scalars["memory/max_reserved(GiB)"].items() if s > spec["warmup"]]
    losses = scalars["loss_metrics/global_avg_loss"]
    return {"step_times": list(timed.values()), "peak_gib": max(active), "reserved_gib": max(reserved),
            "loss": losses[max(losses)], "titan_tps": statistics.fmean(
                v for s, v in scalars["throughput(tps)"].items() if s > spec["warmup"])}


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    if not out:
        raise RuntimeError(f"torchtitan wrote no TensorBoard scalars under {folder}")
    return out


def _demo_text_corpus(scratch: Path, copies: int = 24) -> Path:
    """Enough byte-tokenized text for 128k-token sequences: the demo corpus, several times over."""
    from alphaexa.data.demo_corpus import demo_corpus_documents

    folder = scratch / "corpus"
    if not folder.is_dir():
        text = "\n\n".join(body for _, body in demo_corpus_documents())
        folder.mkdir(parents=True)
        for i in range(copies):
            (folder / f"part{i:02d}.txt").write_text(text)
    return folder


def _alphaexa(spec: dict, m: dict) -> dict:
    """``alphaexa train`` (the CLI entry point, in this process) on configs/1b.toml at the shape."""
    from alphaexa.cli import main as alphaexa_main
    from alphaexa.train.metrics import read_metrics

    scratch = Path(spec["scratch"])
    run_dir = scratch / f"alphaexa-{spec['name'].replace(' ', '_')}"
    last_timed = spec["warmup"] + spec["timed"]
    steps = last_timed
    profiled: dict = {}
    if spec.get("profile_steps"):
        # One untimed step between the timed and the profiled ones: it is read before the profiler
        # starts (_profile_trainer_steps), so the last timed step still overlaps the next one, as
        # every timed step before it does (train.overlap_steps).
        steps = last_timed + 1 + spec["profile_steps"]
        _profile_trainer_steps(last_timed + 2, spec["profile_steps"], profiled)
    sets = [f"model.preset={m['preset']}", *(f"model.{k}={v}" for k, v in m["overrides"].items()),
            f"model.max_seq_len={m['max_seq_len']}", f"model.sliding_window={m['sliding_window']}",
            f"train.steps={steps}", f"train.warmup={min(2, steps - 1)}", f"train.global_batch={spec['batch']}",
            f"train.seq_len={spec['seq']}", f"parallel.mbs={spec['batch']}", "train.eval_every=0",
            "train.eval_batches=0", "train.log_every=1000", "checkpoint.enabled=false",
            f"data.corpus={_demo_text_corpus(scratch)}", f"data.cache_dir={scratch / 'data-cache'}",
            "data.tokenizer=byte", "data.val_fraction=0.25", "logging.progress=false",
            *spec["alphaexa_sets"], *spec["options"].get("sets", [])]  # the contender's own lever wins
    argv = ["train", "--config", str(REPO / "configs" / "1b.toml"), "--run-dir", str(run_dir)]
    code = alphaexa_main([*argv, *(a for s in sets for a in ("--set", s))])
    if code:
        raise RuntimeError(f"alphaexa train exited {code}")
    records, _, events = read_metrics(run_dir)
    for snapshot in run_dir.glob("memory_snapshot_rank_*.pickle"):  # debug.memory_snapshot: kept for memory_peak.py
        shutil.move(snapshot, Path(spec["out_dir"]) / f"memory-{_slug(spec['name'])}-{snapshot.name.removeprefix('memory_snapshot_')}")
    shutil.rmtree(run_dir, ignore_errors=True)  # disk: nothing of a run is kept but its figures
    timed = [r for r in records if spec["warmup"] < r["step"] <= last_timed]
    start = next(e for e in events if e["event"] == "start")
    module = "FSDP2" if start["fsdp_wrapped"] else "plain module + autocast"
    if start.get("bf16_weights"):
        module += " (bf16 weights, fp32 masters)"
    layout = (f"{start['layout_short']}, {module}, "
              f"compile {'on' if start['compiled'] else 'off'}")
    return {"step_times": [r["step_time_s"] for r in timed], "peak_gib": max(r["mem_gib"] for r in timed),
            "loss": timed[-1]["loss"], "layout": layout, "sets": sets, **profiled}


def _profile_trainer_steps(first: int, count: int, into: dict) -> None:
    """Profile the trainer's steps ``first`` .. ``first + count - 1`` (this worker process only: it
    wraps ``Trainer._launch_step``, ``Trainer._finish_step`` and ``Trainer._overlaps``, the package is
    unchanged); the summary goes to ``into["profile"]``.  The trainer may launch step N+1 before it
    reads step N (``train.overlap_steps``): step ``first - 1`` is read before ``first`` is launched, so
    that setting the profiler up (a device synchronisation, the profiler's start, CUPTI's
    initialisation) falls in no timed step's wall time (a step's time ends when its record is
    written, after the next step's launch where the two overlap); the window opens on a drained
    device at the launch of ``first`` and closes, the device drained again, at the launch of
    ``first + count`` or once ``first + count - 1`` is read, whichever comes first, so it holds
    exactly ``count`` steps' kernels."""
    from alphaexa.train.trainer import Trainer

    launch, finish, overlaps = Trainer._launch_step, Trainer._finish_step, Trainer._overlaps

    def close() -> None:
        if "_profiler" in into:
            into["profile"] = into.pop("_profiler").stop()

    def overlaps_step(self, step: int, last: int) -> bool:
        return step != first - 1 and overlaps(self, step, last)

    def launch_step(self, step: int):
        if step == first:
            into["_profiler"] = _StepProfiler(count)
            into["_profiler"].start()
        elif step == first + count:
            close()
        return launch(self, step)

    def finish_step(self, launched, recent_losses: list[float]) -> dict:
        record = finish(self, launched, recent_losses)
        if launched.step == first + count - 1:
            close()
        return record

    Trainer._launch_step, Trainer._finish_step, Trainer._overlaps = launch_step, finish_step, overlaps_step


def _attention_kernels(m: dict, spec: dict) -> list[dict]:
    """Every registered kernel on this device at the model's attention shape, causal and with a
    sliding window of a quarter of the sequence: error against the math reference (fresh random
    inputs, small batch), then forward + backward time at the full batch.  A kernel that cannot
    serve a case is listed as such (flex serves windows only; the forced SDPA backends no windows)."""
    from backends.attention import KERNELS, attend, available_kernels, describe_call

    rows = []
    b, s = spec["batch"], spec["seq"]
    shape_q, shape_kv = (b, m["n_heads"], s, m["head_dim"]), (b, m["n_kv_heads"], s, m["head_dim"])
    for window in (0, s // 4):
        case = f"window {window}" if window else "causal"
        # Keys each query sees on average, for the FLOP count (causal: (s+1)/2).
        visible = window * (1 - window / (2 * s)) if window else (s + 1) / 2
        for name in available_kernels(DEVICE):
            row = {"kernel": name, "case": case}
            probe = torch.empty(shape_q, device=DEVICE, dtype=torch.bfloat16)
            probe_kv = torch.empty(shape_kv, device=DEVICE, dtype=torch.bfloat16)
            reason = KERNELS[name].unsupported(describe_call(probe, probe_kv, probe_kv, causal=True, window=window,
                                                             q_offset=0))
            if reason is not None:
                rows.append({**row, "status": f"n/a: {reason}"})
                continue
            try:
                q, k, v = (torch.randn(sh, device=DEVICE, dtype=torch.float64)[:1, :, :512]
                           for sh in (shape_q, shape_kv, shape_kv))
                small_window = window // max(1, s // 512)
                reference = attend(q, k, v, causal=True, window=small_window, kernel="math")
                low = [t.to(torch.bfloat16) for t in (q, k, v)]
                got = attend(*low, causal=True, window=small_window, kernel=name).double()
                row["rel_error"] = float((got - reference).norm() / reference.norm())
                q, k, v = (torch.randn(sh, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
                           for sh in (shape_q, shape_kv, shape_kv))
                grad = torch.randn(shape_q, device=DEVICE, dtype=torch.bfloat16)
                ms = _fwd_bwd_ms(name, window, q, k, v, grad, spec["warmup"], spec["timed"])
                flops = 3 * 4 * b * m["n_heads"] * m["head_dim"] * s * visible
                row.update(fwd_bwd_ms=ms, tflops=flops / ms / 1e9,
                           status="ok" if row["rel_error"] < 2e-2 else "WRONG")
            except RuntimeError as e:
                row["status"] = f"failed: {type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    return rows


def _fwd_bwd_ms(kernel: str, window: int, q: Tensor, k: Tensor, v: Tensor, grad: Tensor, warmup: int,
                timed: int) -> float:
    from backends.attention import attend

    for _ in range(warmup):
        attend(q, k, v, causal=True, window=window, kernel=kernel).backward(grad)
    _synchronize()
    begun = time.perf_counter()
    for _ in range(timed):
        attend(q, k, v, causal=True, window=window, kernel=kernel).backward(grad)
    _synchronize()
    return 1000 * (time.perf_counter() - begun) / timed


# ------------------------------------------------------------------------------ reporting
def _environment() -> dict:
    info: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    info["peak_bf16_tflops"] = (_peak_flops(info["device"]) or 0) / 1e12 if info["device"] else None
    for module in ("torchtitan", "torchao", "liger_kernel", "flash_attn", "flash_attn_interface"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError) as e:
            info[module] = f"unavailable ({type(e).__name__})"
    return info


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if "kernels" in row:
        return ", ".join(f"{k['kernel']} ({k['case']}) {k['fwd_bwd_ms']:.2f} ms" for k in row["kernels"]
                         if "fwd_bwd_ms" in k)
    what = f" [{row['titan_mode']}]" if "titan_mode" in row else ""
    return f"{row['tokens_per_s']:,.0f} tok/s, peak {row['peak_gib']:.1f} GiB{what}"


def _ratios(rows: list[dict]) -> list[dict]:
    """AlphaExa's tokens/s (and peak memory) over every peer's in the same section and shape."""
    ok = [r for r in rows if r["status"] == "ok" and "tokens_per_s" in r]
    out = []
    for ours in (r for r in ok if r["kind"] == "alphaexa"):
        for peer in (r for r in ok if r["kind"] != "alphaexa" and (r["shape"], r["seq"]) == (ours["shape"], ours["seq"])):
            out.append({"alphaexa": ours["name"], "peer": peer["name"],
                        "tokens_per_s_ratio": ours["tokens_per_s"] / peer["tokens_per_s"],
                        "peak_memory_ratio": ours["peak_gib"] / peer["peak_gib"] if peer["peak_gib"] else None})
    return out


def _print_tables(result: dict) -> None:
    env = result["environment"]
    print(f"\n== vs_peers on {env.get('device')}: torch {env.get('torch')}, torchtitan {env.get('torchtitan')}; "
          f"{result['steps']['warmup']} warm-up + {result['steps']['timed']} timed steps; {result['wall_s']:.0f} s")
    header = (f"{'section':<10}{'contender':<28}{'shape':<14}{'tokens':>8}{'tokens/s':>11}{'MFU':>7}"
              f"{'peak GiB':>10}{'rsv GiB':>9}{'loss':>7}  status")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        if "kernels" in r:
            continue
        ok = r["status"] == "ok"
        mfu = f"{r['mfu']:.1%}" if ok and r.get("mfu") else "-"
        figures = (f"{r['tokens_per_s']:>11,.0f}{mfu:>7}{r['peak_gib']:>10.1f}"
                   f"{r.get('reserved_gib', float('nan')):>9.1f}{r['loss']:>7.2f}") if ok else f"{'':>44}"
        print(f"{r['section']:<10}{r['name']:<28}{r['shape'] + ' ' + str(r['seq']):<14}"
              f"{r['batch'] * r['seq']:>8}{figures}  {r['status']}")
    for r in result["rows"]:
        if "titan_mode" in r or "layout" in r:
            print(f"  {r['name']}: ran as {r.get('titan_mode') or r['layout']}")
    if result["ratios"]:
        print("\nAlphaExa / peer (same shape, same run):")
        for q in result["ratios"]:
            memory = f"{q['peak_memory_ratio']:.2f}x" if q["peak_memory_ratio"] is not None else "-"
            print(f"  {q['alphaexa']:<26} / {q['peer']:<26} tokens/s {q['tokens_per_s_ratio']:.3f}x, "
                  f"peak memory {memory}")
    for r in result["rows"]:
        if "profile" in r:
            _print_profile(r["name"], r["profile"])
    for r in result["rows"]:
        for k in r.get("kernels", []):
            if k.get("status") == "ok" or "fwd_bwd_ms" in k:
                print(f"  attention {k['kernel']:<12} {k.get('case', 'causal'):<12} fwd+bwd {k['fwd_bwd_ms']:7.2f} ms  "
                      f"{k['tflops']:6.1f} TFLOP/s  error vs math {k['rel_error']:.1e}  {k['status']}")
            else:
                print(f"  attention {k['kernel']:<12} {k.get('case', 'causal'):<12} {k['status']}")



def _print_profile(name: str, p: dict) -> None:
    print(f"\nprofile of {name}: {p['steps']} steps of {p['step_ms']:.1f} ms, {p['what']}; "
          f"busy {p['busy_share']:.1%}, idle {p['idle_share']:.1%}")
    graphs = p.get("compiled_graphs_per_step")
    if graphs and (graphs["forward"] or graphs["backward"]):
        print(f"  compiled graphs entered per step: {graphs['forward']:.0f} forward, {graphs['backward']:.0f} backward"
              " (1 + 1 for a whole-model compile)")
    print("  " + ", ".join(f"{c} {share:.1%}" for c, share in p["categories"].items()))
    print(f"  {'share':>6} {'ms/step':>8} {'calls':>6}  {'category':<27} kernel")
    for k in p["kernels"][:15]:
        print(f"  {k['share']:>6.1%} {k['ms_per_step']:>8.2f} {k['calls_per_step']:>6.0f}  {k['category']:<27} "
              f"{k['name'][:110]}")


if __name__ == "__main__":
    sys.exit(main())
