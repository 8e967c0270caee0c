"""``alphaexa demo``: plan, prepare data, train, evaluate, checkpoint, resume, generate, on this machine.

1. Plan: the planner (``topology.planner.plan``) searches layouts of ``configs/tiny-moe.toml``
   for this node run as ``nproc`` CPU ranks (discovered with ``topology.discovery``; when
   there are fewer cores than ranks the ranks share cores), and the demo takes its fastest
   layout that combines at least two kinds of parallelism.
2. Data: the built-in corpus (CPython's documentation) with a SentencePiece tokenizer of
   the model's vocabulary, built once into the data cache.
3. Train ``nproc`` ranks with ``alphaexa train --nproc`` up to ``stop_at`` (as if preempted),
   then a second launch with ``--resume`` continues from the checkpoint to the end.
4. Generate from the final checkpoint (loaded into this one process) and draw the curves.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from topology.layout import Layout
from topology.modelcfg import ConfigError

from ..errors import UserError
from .config import RunConfig, load_run_config

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-moe.toml"
PROMPTS = ("The for statement", "A dictionary is")
PLAN_CANDIDATES = 50


def kinds_of_parallelism(layout: Layout) -> list[str]:
    kinds = []
    if layout.dp_replicate * layout.dp_shard > 1:
        kinds.append(f"data x{layout.dp_replicate * layout.dp_shard}"
                     + (f" ({layout.sharding})" if layout.dp_shard > 1 else ""))
    for name, label in (("tp", "tensor"), ("pp", "pipeline"), ("ep", "expert"), ("cp", "context")):
        if getattr(layout, name) > 1:
            kinds.append(f"{label} x{getattr(layout, name)}")
    return kinds


def local_system(nproc: int):
    """This node (discovered) as ``nproc`` CPU ranks: one slot per rank, memory and peak split among
    them; with fewer cores than ranks each core is listed for several ranks (they share it)."""
    from topology.discovery import auto_system
    from topology.hardware import LinkLevel, Slot
    from topology.placement import parse_cpulist

    system = auto_system()
    node = system.node
    cores = sum(len(parse_cpulist(c)) for c in node.numa_cores)
    share = max(1, -(-nproc // max(1, cores)))
    device = dataclasses.replace(node.device, memory_gib=node.device.memory_gib / nproc,
                                 bf16_tflops=node.device.bf16_tflops / nproc,
                                 fp32_tflops=node.device.fp32_tflops / nproc)
    numa = node.slots[0].numa
    node = dataclasses.replace(
        node, device=device, slots=tuple(Slot(str(r), numa, node.slots[0].nic) for r in range(nproc)),
        link_levels=(LinkLevel(nproc, node.link_levels[-1].link),),
        numa_cores=tuple(",".join([c] * share) for c in node.numa_cores))
    return dataclasses.replace(system, node=node, name=f"this node as {nproc} CPU ranks")


def plan_layout(cfg: RunConfig, nproc: int, out: Path) -> tuple[Layout, str]:
    """The planner's fastest layout with two or more kinds of parallelism; writes the plan file."""
    from topology.planner import plan

    try:
        result = plan(cfg.model, local_system(nproc), 1, cfg.train.global_batch, cfg.train.seq_len,
                      top=PLAN_CANDIDATES)
    except ConfigError as e:
        return _fallback(nproc, f"the planner could not plan this node ({e})")
    document = result.to_dict()
    for rank, candidate in enumerate(result.plans):
        layout = candidate.estimate.layout
        if len(kinds_of_parallelism(layout)) >= 2:
            document["plans"] = [document["plans"][rank]] + [p for i, p in enumerate(document["plans"]) if i != rank]
            out.write_text(json.dumps(document, indent=1) + "\n")
            why = (f"planner: {result.feasible} feasible layouts for {nproc} CPU ranks; fastest with two or more "
                   f"kinds of parallelism is #{rank + 1} (predicted {candidate.estimate.step_time_s * 1e3:.0f} ms/step"
                   f"; #1 {result.plans[0].estimate.layout.short()})" if rank else
                   f"planner: fastest of {result.feasible} feasible layouts for {nproc} CPU ranks")
            return layout, why
    return _fallback(nproc, f"none of the planner's {len(result.plans)} best layouts combines two kinds of "
                            f"parallelism")


def _fallback(nproc: int, reason: str) -> tuple[Layout, str]:
    layout = Layout(pp=2, dp_shard=nproc // 2, mbs=2) if nproc % 2 == 0 and nproc >= 4 else Layout(dp_shard=nproc)
    return layout, f"{reason}; using {layout.short()} instead"


def _launch(argv: list[str]) -> None:
    code = subprocess.run([sys.executable, "-m", "alphaexa", *argv], check=False).returncode
    if code != 0:
        raise UserError(f"`alphaexa {' '.join(argv)}` failed with exit status {code}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def run_demo(run_dir: Path | None, nproc: int, steps: int | None, resume_steps: int, config: Path = DEMO_CONFIG) -> int:
    started = time.perf_counter()
    overrides = [f"train.steps={steps}"] if steps else []
    cfg = load_run_config(config, overrides)
    if not 1 <= resume_steps < cfg.train.steps:
        raise UserError(f"--resume-steps {resume_steps}: must be between 1 and train.steps-1 = {cfg.train.steps - 1}")
    run_dir = run_dir or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} exists and is not empty; choose another --run-dir")
    print(f"== AlphaExa demo: {cfg.model.name} on {nproc} CPU ranks ({os.cpu_count()} cores), "
          f"{cfg.train.steps} steps of {cfg.train.global_batch} x {cfg.train.seq_len} tokens", flush=True)

    print("== 1/5 plan the layout for this node", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = run_dir / "plan.json"
    layout, why = plan_layout(cfg, nproc, plan_file)
    layout_sets = [f"parallel.{k}={v}" for k, v in layout.to_dict().items()]
    print(f"   {layout.short()}: {' + '.join(kinds_of_parallelism(layout))}\n   {why}", flush=True)

    print("== 2/5 prepare the demo data (built-in corpus, SentencePiece tokenizer; cached)", flush=True)
    from .dataset import prepare_dataset

    dataset = prepare_dataset(cfg.data, cfg.model, progress=True)
    print(f"   {dataset}", flush=True)

    stop_at = cfg.train.steps - resume_steps
    print(f"== 3/5 train steps 1-{stop_at}, then stop as a preempted job would", flush=True)
    common = ["--set", f"train.steps={cfg.train.steps}"]
    plan_args = ["--plan", str(plan_file)] if plan_file.is_file() else []
    layout_args = [] if plan_args else [a for s in layout_sets for a in ("--set", s)]
    _launch(["train", "--config", str(config), "--run-dir", str(run_dir), "--nproc", str(nproc), "--stop-at",
             str(stop_at), *plan_args, *layout_args, *common])

    print(f"== 4/5 resume from the checkpoint of step {stop_at} for steps {stop_at + 1}-{cfg.train.steps} "
          f"(a second launch with --resume)", flush=True)
    _launch(["train", "--run-dir", str(run_dir), "--resume", "--nproc", str(nproc)])

    print("== 5/5 generate from the final checkpoint", flush=True)
    samples = _generate(run_dir)
    _summary(run_dir, samples, time.perf_counter() - started)
    return 0


def _generate(run_dir: Path) -> list[str]:
    from ..model.generate import generate
    from .restore import load_trained_model

    trained = load_trained_model(run_dir)
    tokenizer = trained.tokenizer
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    result = generate(trained.model, prompts, 48, temperature=0.7, top_k=40, eos_id=tokenizer.eos_id, seed=0)
    texts = [text + tokenizer.decode(tokens) for text, tokens in zip(PROMPTS, result.tokens)]
    for text in texts:
        print(f"   >>> {text.strip()}", flush=True)
    return texts


def _summary(run_dir: Path, samples: list[str], seconds: float) -> None:
    from .metrics import read_metrics
    from .plots import plot_run, read_plan

    steps, evals, events = read_metrics(run_dir)
    plots = plot_run(steps, evals, run_dir / "plots", read_plan(run_dir))
    resume = next(e for e in events if e["event"] == "resume")
    first, last = steps[0], steps[-1]
    print(f"== done in {_duration(seconds)}", flush=True)
    print(f"   training loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']})")
    if evals:
        print("   held-out loss " + " -> ".join(f"{e['loss']:.3f} (step {e['step']})" for e in evals)
              + f", perplexity {evals[-1]['perplexity']:.1f}")
    print(f"   resumed at step {resume['step']} on {resume['world_size']} ranks, {resume['layout_short']}")
    print(f"   plots: {', '.join(p.name for p in plots)} in {run_dir / 'plots'}")
    print(f"   run directory: {run_dir.resolve()}", flush=True)
