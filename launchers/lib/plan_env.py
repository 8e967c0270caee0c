"""Turn a plan's placement into what the site launchers need (standard library only).

The launchers never derive CPU or device bindings themselves: they read them from
the plan that ``alphaexa plan --json --out plan.json`` writes (the best plan is
``plans[0]``; its ``placement`` holds ``nodes``, ``ranks_per_node``, ``cpu_bind``,
``visibility_env``, ``node_env`` and one ``local`` entry per local rank with its
``device``, ``cpus``, ``nic`` and ``numa``).  A file holding one plan object (with
``placement`` at its top level) is accepted as well.

Subcommands (errors: one line "<prog>: error: ..." on stderr, exit status 2):

  shell     bash assignments (AX_P_*) for the launcher to eval
  describe  the per-node, per-rank table of a dry run, as shell comments
  nodes     the number of nodes the plan needs (for qsub's select=)
  plan-args the `alphaexa plan` arguments taken from a training config

Runs on a login node with any python3 >= 3.10: no torch, no alphaexa import (reading a TOML
config for plan-args needs tomllib, Python >= 3.11).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

# How each site exposes one device per rank.  Aurora's frameworks module runs the
# Level Zero driver in FLAT mode (each tile its own device), where ZE_AFFINITY_MASK
# takes flat device indices; the gpu.tile notation of ALCF's gpu_tile_compact.sh
# belongs to COMPOSITE mode.  See docs/launchers.md, "Device visibility on Aurora".
ZE_HIERARCHIES = ("FLAT", "COMPOSITE")


class PlanError(Exception):
    """A bad plan or request; the message is the whole story, on one line."""


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------ reading the plan
def load_plan(path: str, label: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(whole document, chosen plan) from a plan file; ``label`` names it in messages."""
    name = label or f"plan {path}"
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise PlanError(f"cannot read {name}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{name} is not JSON ({e.msg} at line {e.lineno}); "
                        "write it with alphaexa plan ... --json --out FILE") from None
    if not isinstance(doc, dict):
        raise PlanError(f"{name}: expected a JSON object at the top level")
    if "placement" in doc:
        return doc, doc
    plans = doc.get("plans")
    if plans is None:
        raise PlanError(f"{name} has neither 'plans' nor 'placement': not an alphaexa plan")
    if not plans:
        advice = " ".join(doc.get("infeasible", {}).get("advice", [])) or "no layout fits"
        raise PlanError(f"{name} holds no feasible plan: {advice}")
    if not isinstance(plans[0], dict) or "placement" not in plans[0]:
        raise PlanError(f"{name}: plans[0] has no 'placement'")
    return doc, plans[0]


def plan_system(doc: dict[str, Any], chosen: dict[str, Any]) -> str | None:
    system = chosen.get("system", doc.get("system"))
    if isinstance(system, dict):
        return system.get("name")
    return system if isinstance(system, str) else None


class Placement:
    """The fields of a plan's placement that a launcher uses, checked."""

    def __init__(self, name: str, raw: dict[str, Any]):
        self.path = name
        try:
            self.nodes = int(raw["nodes"])
            self.ranks_per_node = int(raw["ranks_per_node"])
            self.cpu_bind = str(raw["cpu_bind"])
            self.visibility_env = str(raw.get("visibility_env") or "")
            self.node_env = {str(k): str(v) for k, v in (raw.get("node_env") or {}).items()}
            self.local = [dict(entry) for entry in raw["local"]]
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{name}: placement is missing or has a bad field ({e})") from None
        if self.nodes < 1 or self.ranks_per_node < 1:
            raise PlanError(f"{name}: placement has {self.nodes} nodes x {self.ranks_per_node} ranks")
        if len(self.local) != self.ranks_per_node:
            raise PlanError(f"{name}: placement lists {len(self.local)} local ranks for "
                            f"ranks_per_node={self.ranks_per_node}")
        for want, entry in enumerate(self.local):
            if int(entry.get("local_rank", want)) != want or "device" not in entry or "cpus" not in entry:
                raise PlanError(f"{name}: placement.local[{want}] needs local_rank={want}, device, cpus")
        expected = "list:" + ":".join(str(entry["cpus"]) for entry in self.local)
        if self.cpu_bind != expected:
            raise PlanError(f"{name}: placement.cpu_bind {self.cpu_bind} disagrees with its "
                            f"per-rank cpus ({expected})")

    @property
    def world(self) -> int:
        return self.nodes * self.ranks_per_node

    def devices(self) -> list[str]:
        return [str(entry["device"]) for entry in self.local]

    def visible_ids(self, ze_hierarchy: str) -> list[str]:
        """The value of the visibility variable per local rank."""
        devices = self.devices()
        if self.visibility_env != "ZE_AFFINITY_MASK" or ze_hierarchy == "COMPOSITE":
            return devices
        return flat_indices(devices, self.path)


def flat_indices(devices: list[str], name: str) -> list[str]:
    """gpu.tile ids -> Level Zero FLAT-mode device indices (gpu * tiles_per_gpu + tile).

    Tiles per GPU are counted from the plan itself: the placement lists every tile of
    every GPU of the node, so the largest tile count of any GPU is the node's.
    """
    pairs = []
    for device in devices:
        match = re.fullmatch(r"(\d+)\.(\d+)", device)
        if not match:
            return devices  # already flat indices (or a one-tile device)
        pairs.append((int(match.group(1)), int(match.group(2))))
    tiles: dict[int, set[int]] = {}
    for gpu, tile in pairs:
        tiles.setdefault(gpu, set()).add(tile)
    per_gpu = max(len(t) for t in tiles.values())
    if any(t != set(range(per_gpu)) for t in tiles.values()):
        raise PlanError(f"{name}: devices {','.join(devices)} do not cover every tile of their GPUs, "
                        "so FLAT indices are ambiguous; use ALPHAEXA_ZE_HIERARCHY=COMPOSITE")
    return [str(gpu * per_gpu + tile) for gpu, tile in pairs]


def checked_placement(args: argparse.Namespace) -> tuple[dict[str, Any], Placement]:
    name = args.label or f"plan {args.plan}"
    doc, chosen = load_plan(args.plan, name)
    system = plan_system(doc, chosen)
    if system is not None and system != args.site:
        raise PlanError(f"{name} is for system '{system}', but this is the {args.site} launcher; "
                        f"plan with --system {args.site}")
    placement = Placement(name, chosen["placement"])
    if args.allocated is not None and placement.nodes > args.allocated:
        raise PlanError(f"{name} needs {placement.nodes} nodes but the job has {args.allocated}; "
                        f"request select={placement.nodes} or plan for --nodes {args.allocated}")
    return doc, placement


# ------------------------------------------------------------------ subcommands
def cmd_shell(args: argparse.Namespace) -> None:
    _, placement = checked_placement(args)
    values = {
        "AX_P_NODES": str(placement.nodes),
        "AX_P_RANKS_PER_NODE": str(placement.ranks_per_node),
        "AX_P_WORLD": str(placement.world),
        "AX_P_CPU_BIND": placement.cpu_bind,
        "AX_P_VISIBILITY_VAR": placement.visibility_env,
        "AX_P_DEVICE_LIST": ":".join(placement.visible_ids(args.ze_hierarchy)),
    }
    for name, value in values.items():
        print(f"{name}={shlex.quote(value)}")
    node_env = " ".join(shlex.quote(f"{k}={v}") for k, v in placement.node_env.items())
    print(f"AX_P_NODE_ENV=({node_env})")


def cmd_describe(args: argparse.Namespace) -> None:
    _, placement = checked_placement(args)
    hosts = [h for h in Path(args.hosts).read_text().split() if h] if args.hosts else []
    visible = placement.visible_ids(args.ze_hierarchy)
    var = placement.visibility_env or "(no visibility variable)"
    for node in range(placement.nodes):
        host = hosts[node] if node < len(hosts) else f"node{node}"
        first = node * placement.ranks_per_node
        print(f"# node {node} {host}: ranks {first}-{first + placement.ranks_per_node - 1}")
        for entry, value in zip(placement.local, visible):
            local = int(entry["local_rank"])
            fields = [f"#   rank {first + local} local {local}", f"{var}={value}"]
            if value != str(entry["device"]):
                fields.append(f"device={entry['device']}")
            fields.append(f"cpus={entry['cpus']}")
            if entry.get("nic"):
                fields.append(f"nic={entry['nic']}")
            if "numa" in entry:
                fields.append(f"numa={entry['numa']}")
            print(" ".join(fields))


def cmd_nodes(args: argparse.Namespace) -> None:
    args.allocated = None
    _, placement = checked_placement(args)
    print(placement.nodes)


def _set_overrides(sets: list[str]) -> dict[str, str]:
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise PlanError(f"--set {item}: expected section.key=value")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def cmd_plan_args(args: argparse.Namespace) -> None:
    """`alphaexa plan` arguments for the model, batch and sequence length of a run.

    Flags win, then --set overrides, then the config file; a value found nowhere is
    an error rather than a silent default that might differ from the trainer's.
    """
    config: dict[str, Any] = {}
    if not (args.model and args.global_batch and args.seq_len):
        try:
            import tomllib
        except ImportError:
            raise PlanError(f"reading {args.config} needs Python >= 3.11 (tomllib): pass --model, --global-batch "
                            "and --seq-len for the fresh plan, or --plan FILE") from None
        if not args.config.endswith(".toml"):
            raise PlanError(f"config {args.config} is not TOML: pass --model, --global-batch and --seq-len "
                            "for the fresh plan, or pass --plan FILE")
        try:
            config = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise PlanError(f"cannot read config {args.config}: {e}") from None
    sets = _set_overrides(args.set or [])

    def pick(flag: str | None, key: str, section: str, field: str, what: str) -> str:
        value = flag or sets.get(key) or config.get(section, {}).get(field)
        if value in (None, ""):
            raise PlanError(f"config {args.config} sets no {key}: pass {what} for the fresh plan, or --plan FILE")
        return str(value)

    out = ["--model", pick(args.model, "model.preset", "model", "preset", "--model NAME"),
           "--global-batch", pick(args.global_batch, "train.global_batch", "train", "global_batch",
                                  "--global-batch N"),
           "--seq-len", pick(args.seq_len, "train.seq_len", "train", "seq_len", "--seq-len N")]
    print(" ".join(shlex.quote(word) for word in out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="plan_env.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prog", default="plan_env.py", help="name to put in error messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("shell", "describe", "nodes"):
        p = sub.add_parser(name)
        p.add_argument("--plan", required=True)
        p.add_argument("--site", required=True)
        p.add_argument("--allocated", type=int, default=None, help="nodes in the job")
        p.add_argument("--ze-hierarchy", choices=ZE_HIERARCHIES, default="FLAT")
        p.add_argument("--label", default=None, help="how messages name the plan (default: its path)")
        p.add_argument("--prog", dest="sub_prog", default=None)
        if name == "describe":
            p.add_argument("--hosts", default=None, help="file with the job's host names, one per line")
    p = sub.add_parser("plan-args")
    p.add_argument("--config", required=True)
    p.add_argument("--model")
    p.add_argument("--global-batch")
    p.add_argument("--seq-len")
    p.add_argument("--set", action="append")
    p.add_argument("--prog", dest="sub_prog", default=None)
    args = parser.parse_args(argv)
    prog = args.sub_prog or args.prog
    handlers = {"shell": cmd_shell, "describe": cmd_describe, "nodes": cmd_nodes, "plan-args": cmd_plan_args}
    try:
        handlers[args.command](args)
    except PlanError as e:
        fail(prog, str(e))


if __name__ == "__main__":
    main()
