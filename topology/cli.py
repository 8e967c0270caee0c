"""Command line of the torch-free layer: ``plan``, ``topo`` and ``systems``.

``python -m topology plan ...`` and ``alphaexa plan ...`` share this code
(alphaexa/commands/plan.py and topo.py only delegate), so the planner runs on a
login node where torch is not installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .hardware import ANY_NODES, PRESETS
from .layout import RECOMPUTE_MODES, SCHEDULES, SHARDING_MODES
from .modelcfg import ConfigError
from .presets import preset_names
from .support import OFFLOADS

PIN_OPTIONS = (("tp", int), ("pp", int), ("vpp", int), ("dp", int), ("dp_replicate", int), ("dp_shard", int),
               ("ep", int), ("cp", int), ("mbs", int))


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"preset ({', '.join(preset_names())}) or a TOML/YAML/JSON file")
    p.add_argument("--system", required=True,
                   help=f"preset ({', '.join(PRESETS)}), a YAML/JSON file, or 'auto' (this node)")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--global-batch", type=int, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="calibration profile from `alphaexa calibrate`: its measured constants replace the system's")
    p.add_argument("--print-system", action="store_true",
                   help="write the --system entry as an editable YAML file to stdout (or --out) and stop")
    pins = p.add_argument_group("pins (fix a dimension; the rest is searched)")
    for name, typ in PIN_OPTIONS:
        pins.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None, metavar="N",
                          help="data-parallel degree dp_replicate*dp_shard" if name == "dp" else None)
    pins.add_argument("--recompute", choices=RECOMPUTE_MODES, default=None)
    pins.add_argument("--sharding", choices=SHARDING_MODES, default=None)
    pins.add_argument("--schedule", choices=SCHEDULES, default=None)
    p.add_argument("--offload", choices=OFFLOADS, default=None,
                   help="none: never offload; cpu|nvme: only that; default: offload only when nothing fits without it")
    p.add_argument("--nvme-path", default=None, metavar="DIR",
                   help="local NVMe directory written into the plan (parallel.nvme_path) when it offloads to nvme")
    p.add_argument("--top", type=int, default=5, help="how many layouts to list (default 5)")
    p.add_argument("--explain", action="store_true", help="why the winner wins and what binds")
    p.add_argument("--json", action="store_true", help="print the plan JSON instead of the table")
    p.add_argument("--out", default=None, help="also write the plan JSON to this file")
    p.add_argument("--hosts", default=None,
                   help="comma-separated host names for the placement (default: the job's PBS/SLURM node list)")


def planned_system(args: argparse.Namespace):
    """--system, with --profile's fitted constants when given."""
    from .planner import resolve_system
    from .profile import apply_profile, load_profile

    system = resolve_system(args.system)
    return apply_profile(system, load_profile(args.profile)) if args.profile else system


def print_system(args: argparse.Namespace) -> int:
    """The catalogue entry (or file, or discovered node) as YAML that ``--system FILE`` reads back."""
    import yaml

    system = planned_system(args)
    header = (f"# {system.description}\n# edit and pass back with --system FILE; a file may also start from a preset "
              f"with 'preset: NAME' and list only what differs\n")
    text = header + yaml.safe_dump(system.to_dict(), sort_keys=False)
    if args.out:
        Path(args.out).write_text(text)
        print(f"system {system.name} written to {args.out}")
    else:
        print(text, end="")
    return 0


def run_plan(args: argparse.Namespace, check=None) -> int:
    """``check``: optional ``PlanResult -> (verify object, text, passed)`` run on a plan before it
    is printed (``alphaexa plan --verify``); its object joins the plan JSON as ``verify``."""
    from .discovery import node_list
    from .planner import plan

    if args.print_system:
        return print_system(args)
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "global_batch", "seq_len")
               if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required (only --print-system works without them)")

    pins = {name: getattr(args, name) for name, _ in PIN_OPTIONS}
    pins.update(recompute=args.recompute, sharding=args.sharding, schedule=args.schedule)
    if args.hosts:
        hosts = [h for h in args.hosts.split(",") if h]
        if len(hosts) != args.nodes:
            raise ConfigError(f"--hosts names {len(hosts)} host(s) for --nodes {args.nodes}")
    else:
        job = node_list()  # inside a PBS/SLURM job: name the allocated nodes when the counts agree
        hosts = job[:args.nodes] if len(job) >= args.nodes else None
    result = plan(args.model, planned_system(args), args.nodes, args.global_batch, args.seq_len, pins=pins,
                  top=args.top, hosts=hosts, explain=args.explain, offload=args.offload, nvme_path=args.nvme_path)
    checked, check_text, passed = check(result) if check and result.plans else (None, "", True)
    text = result.to_json() if checked is None else result.to_json(extra={"verify": checked})
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(result.table(validation=not (args.explain and result.plans)))  # --explain ends with it
        if args.explain and result.plans:
            print()
            print(result.explain())
        if check_text:
            print()
            print(check_text)
        if args.out:
            print(f"plan written to {args.out}")
    return 0 if result.plans and passed else 1


def add_topo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the discovery as JSON")
    p.add_argument("--root", default="/", help="filesystem root to read sysfs from (default /)")
    p.add_argument("--no-torch", action="store_true", help="do not fall back to probing GPUs with torch")


def run_topo(args: argparse.Namespace) -> int:
    from .discovery import discover, system_from_discovery
    from .placement import local_ranks

    found = discover(args.root, torch_fallback=not args.no_torch)
    system = system_from_discovery(found)
    if args.json:
        print(json.dumps({"discovery": found.to_dict(), "system": system.to_dict()}, indent=1))
        return 0
    cpu = found.cpu
    print(f"host {found.hostname}: {cpu.sockets} socket(s), {len(cpu.physical_cores)} physical cores x "
          f"{cpu.threads_per_core} thread(s), {cpu.memory_gib:.1f} GiB")
    for numa, cores in cpu.to_dict()["numa"].items():
        print(f"  NUMA {numa}: cores {cores}")
    if found.gpus:
        print(f"GPUs ({found.source}):")
        for g in found.gpus:
            print(f"  {g.id}: {g.name}, {g.memory_gib:.0f} GiB, NUMA {g.numa}" + (f", NIC {g.nic}" if g.nic else ""))
    else:
        print("GPUs: none found")
    for lv in system.node.link_levels:
        print(f"  link: groups of {lv.size} on {lv.link.name} ({lv.link.gbps:.0f} GB/s per direction)")
    print("NICs: " + (", ".join(f"{n.name} ({n.kind}, {n.gbps:.1f} GB/s, NUMA {n.numa})" for n in found.nics)
                      or "none"))
    print("job nodes: " + (f"{len(found.hosts)} ({', '.join(found.hosts[:4])}{', ...' if len(found.hosts) > 4 else ''})"
                           if found.hosts else "none (not inside a PBS/SLURM job)"))
    local = local_ranks(system)
    print(f"placement: --cpu-bind list:{':'.join(lr.cpu_list for lr in local)}"
          + (f"  {system.node.visibility_env}={','.join(lr.device for lr in local)}"
             if system.node.visibility_env else ""))
    return 0


def run_systems(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({name: s.summary() for name, s in PRESETS.items()}, indent=1))
        return 0
    for name, s in PRESETS.items():
        d = s.node.device
        size = "any number of nodes" if s.max_nodes >= ANY_NODES else f"max {s.max_nodes:5d} nodes"
        print(f"{name:15s} {s.ranks_per_node:2d} x {d.name:16s} {d.memory_gib:5.0f} GiB {d.bf16_tflops:6.0f} TF  "
              f"{size}  {s.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m topology",
                                     description="Torch-free planner: hardware catalogue, discovery, layouts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("plan", help="search parallel layouts for a model on a system")
    add_plan_arguments(p)
    p.set_defaults(_run=run_plan)
    t = sub.add_parser("topo", help="describe this node (CPUs, NUMA, GPUs, links, NICs, job nodes)")
    add_topo_arguments(t)
    t.set_defaults(_run=run_topo)
    s = sub.add_parser("systems", help="list the hardware catalogue")
    s.add_argument("--json", action="store_true")
    s.set_defaults(_run=run_systems)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"topology {args.command}: error: {e}", file=sys.stderr)
        return 2
