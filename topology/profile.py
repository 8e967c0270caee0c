"""Calibration profiles: a machine's measured constants, written by ``alphaexa calibrate`` (torch-free).

A profile holds what was measured (GEMMs by shape, fused attention, each collective
by size and group) and the cost-model constants fitted from it.  ``alphaexa plan
--profile FILE`` replaces the system's device and link constants with the fitted
ones, so a site can ship its own profile instead of trusting the catalogue's.

Fits (each one constant from its own measurements, with the cost model's shape rules):

* ``gemm_efficiency``: per GEMM, the efficiency that makes ``costmodel.gemm_seconds``
  (wave quantisation, launch) plus the host round trip equal the measured time;
  the median over the compute-bound shapes;
* ``attention_efficiency``: the same for ``attention_seconds`` forward + its
  backward (``ATTN_BWD_FACTOR``) against a timed causal forward+backward;
* ``collective_call_us``: the median excess of the smallest buffers over the
  link model's latency and transfer;
* per link class, ``efficiency``: the median bus bandwidth of the largest buffers
  over the link's nominal bandwidth.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from . import costmodel as cm
from .hardware import Link, System
from .modelcfg import ConfigError, load_mapping

PROFILE_VERSION = 1
DEVICE_FIELDS = ("gemm_efficiency", "attention_efficiency", "collective_call_us")
LINK_FIELDS = ("efficiency",)
BULK_BYTES = 256 << 20  # collectives at least this large measure bandwidth
SMALL_BYTES = 1 << 20  # collectives at most this large measure the per-call cost
CALIBRATED_MARK = " (profile applied)"  # apply_profile's suffix of the system's description


def _implied_gemm_efficiency(system: System, g: dict) -> float | None:
    dev = system.node.device
    base = cm.gemm_seconds(dataclasses.replace(dev, gemm_efficiency=1.0), g["m"], g["n"], g["k"])
    t_bytes = 2.0 * (g["m"] * g["k"] + g["k"] * g["n"] + g["m"] * g["n"]) / (dev.memory_gbps * 1e9)
    work = g["measured_s"] - dev.host_sync_us * 1e-6 - dev.launch_us * 1e-6
    t_peak = base - dev.launch_us * 1e-6  # compute time at 100% efficiency
    if work <= max(t_bytes, t_peak):
        return None  # memory-bound or faster than peak: says nothing about the efficiency
    return t_peak / work


def fit_gemm_efficiency(system: System, gemms: list[dict]) -> float | None:
    effs = [e for e in (_implied_gemm_efficiency(system, g) for g in gemms) if e is not None]
    return statistics.median(effs) if effs else None


def fit_attention_efficiency(system: System, cases: list[dict]) -> float | None:
    """Cases: batch, heads, seq, head_dim and the measured forward+backward of causal attention."""
    dev = system.node.device
    effs = []
    for c in cases:
        unit = dataclasses.replace(dev, attention_efficiency=1.0)
        fwd = cm.attention_seconds(unit, c["batch"], c["seq"], c["seq"], c["heads"] * c["head_dim"])
        t_peak = (1 + cm.ATTN_BWD_FACTOR) * (fwd - dev.launch_us * 1e-6)
        work = c["measured_s"] - dev.host_sync_us * 1e-6 - (1 + cm.ATTN_BWD_FACTOR) * dev.launch_us * 1e-6
        if work > t_peak:
            effs.append(t_peak / work)
    return statistics.median(effs) if effs else None


def _bus_factor(op: str, world: int) -> float:
    return 2 * (world - 1) / world if op == "all_reduce" else (world - 1) / world


def fit_collectives(system: System, rows: list[dict]) -> tuple[float | None, dict[str, float]]:
    """(collective_call_us, {link name: efficiency}) from measured collectives of groups inside a node."""
    by_link: dict[str, list[float]] = {}
    calls = []
    for r in rows:
        path = cm.comm_path(system, r["world"], 1)
        link = path.intra
        if link is None:
            continue
        if r["bytes"] >= BULK_BYTES:
            busbw = r["bytes"] * _bus_factor(r["op"], r["world"]) / r["seconds"] / 1e9
            by_link.setdefault(link.name, []).append(busbw / link.gbps)
        elif r["bytes"] <= SMALL_BYTES:
            without_call = dataclasses.replace(path, call_us=0.0)
            rest = cm.collective_seconds(r["op"], r["bytes"], without_call)
            calls.append((r["seconds"] - rest) * 1e6 - system.node.device.host_sync_us)
    call = max(0.0, statistics.median(calls)) if calls else None
    return call, {name: statistics.median(v) for name, v in by_link.items()}


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def fit_profile(system: System, measured: dict[str, Any]) -> dict[str, Any]:
    """The profile for ``system`` from ``measured`` = {gemm: [...], attention: [...], collectives: [...]}."""
    device: dict[str, float] = {}
    gemm = fit_gemm_efficiency(system, measured.get("gemm", []))
    if gemm is not None:
        device["gemm_efficiency"] = _sig(gemm)
    attention = fit_attention_efficiency(system, measured.get("attention", []))
    if attention is not None:
        device["attention_efficiency"] = _sig(attention)
    call, links = fit_collectives(system, measured.get("collectives", []))
    if call is not None:
        device["collective_call_us"] = _sig(call)
    return {"profile_version": PROFILE_VERSION, "system": system.name, "device_name": system.node.device.name,
            "device": device, "links": {k: {"efficiency": _sig(v)} for k, v in links.items()},
            "measured": measured}


def load_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = load_mapping(p)
    except ConfigError as e:
        raise ConfigError(f"--profile: {e}") from None
    if data.get("profile_version") != PROFILE_VERSION:
        raise ConfigError(f"--profile {p}: not an alphaexa calibration profile (write one with `alphaexa calibrate`)")
    for key, fields in (("device", DEVICE_FIELDS), ("links", None)):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"--profile {p}: '{key}' must be a mapping")
        unknown = sorted(set(data.get(key, {})) - set(fields)) if fields else []
        if unknown:
            raise ConfigError(f"--profile {p}: unknown device constant(s) {', '.join(unknown)}; known: "
                              f"{', '.join(DEVICE_FIELDS)}")
    for name, value in data.get("device", {}).items():
        if not isinstance(value, (int, float)) or value <= 0 and name != "collective_call_us":
            raise ConfigError(f"--profile {p}: device.{name}={value!r} must be a positive number")
    return data


def apply_profile(system: System, profile: dict[str, Any]) -> System:
    """``system`` with the profile's fitted device and link constants."""
    node = system.node
    device = dataclasses.replace(node.device, **profile.get("device", {}))
    links = profile.get("links", {})

    def relink(link: Link) -> Link:
        return dataclasses.replace(link, **links[link.name]) if link.name in links else link

    levels = tuple(dataclasses.replace(lv, link=relink(lv.link)) for lv in node.link_levels)
    network = system.network and dataclasses.replace(system.network, nic=relink(system.network.nic))
    return dataclasses.replace(system, node=dataclasses.replace(node, device=device, link_levels=levels),
                               network=network, description=system.description + CALIBRATED_MARK)


def is_calibrated(system: System) -> bool:
    """Whether ``system`` carries a profile's constants (``apply_profile`` marks its description)."""
    return system.description.endswith(CALIBRATED_MARK)


__all__ = ["apply_profile", "fit_profile", "is_calibrated", "load_profile"]
