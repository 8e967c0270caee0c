"""Measured vs predicted for a bench/gpu_calibrate.py run: the cost model's error, before and after.

    python bench/calibration_report.py calibration.json            # tables + |error| summary
    python bench/calibration_report.py calibration.json --markdown # the same as Markdown tables

"Before" is the prediction gpu_calibrate.py stored in the JSON (the cost model of the day of the
run); "now" is the cost model of this checkout, computed the way gpu_calibrate.py computes it:
``gemm_seconds`` on the device, ``collective_seconds`` over ``comm_path(hNNN-xN, N, 1)`` and the
stage of ``structures`` for one GPU.  Every measurement in that script is a synchronised call
timed from the host, so the device's ``host_sync_us`` is added to each prediction.

Needs no torch and no GPU: re-run it after each GPU run, or after changing the cost model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology.hardware import System, load_system
from topology.presets import get_preset

SECTIONS = ("gemm", "collectives", "model")


@dataclass
class Row:
    section: str
    case: str
    measured_s: float
    before_s: float | None  # stored by gpu_calibrate.py at run time
    now_s: float

    @property
    def before_pct(self) -> float | None:
        return None if self.before_s is None else 100.0 * (self.before_s - self.measured_s) / self.measured_s

    @property
    def now_pct(self) -> float:
        return 100.0 * (self.now_s - self.measured_s) / self.measured_s


def family_of(device_name: str) -> str:
    """The presets gpu_calibrate.py compared with: h100-xN / h200-xN, or cpu for a --smoke run."""
    name = device_name.upper()
    if "H200" in name:
        return "h200"
    if "H100" in name:
        return "h100"
    if name == "CPU":
        return "cpu"
    raise SystemExit(f"{device_name!r} is neither an H100 nor an H200: pass --family h100|h200")


def compare(report: dict, family: str) -> list[Row]:
    systems: dict[int, System] = {}

    def system(n: int) -> System:
        if n not in systems:
            systems[n] = load_system("cpu" if family == "cpu" else f"{family}-x{n}")
        return systems[n]

    sync = system(1).node.device.host_sync_us * 1e-6
    rows = []
    for r in report.get("gemm", []):
        now = cm.gemm_seconds(system(1).node.device, r["m"], r["n"], r["k"]) + sync
        rows.append(Row("gemm", f"{r['m']}x{r['n']}x{r['k']}", r["measured_s"], r.get("predicted_s"), now))
    for r in report.get("collectives", []):
        n = r["world"]
        now = cm.collective_seconds(r["op"], r["bytes"], cm.comm_path(system(n), n, 1)) + sync
        case = f"{r['op']} {r['bytes'] / 2**20:g} MiB x{n}"
        rows.append(Row("collectives", case, r["seconds"], r.get("predicted_s"), now))
    for r in report.get("model", []):
        # gpu_calibrate times the model's forward + backward eagerly
        req = cm.Request(get_preset(r["model"]), system(1), 1, r["mbs"], r["seq"], impl=cm.ALPHAEXA_EAGER)
        stage = cm.structures(req, 1, 1, 1, r["mbs"], 1, 1, "1f1b", ("none",))["none"].stages[0]
        case = f"{r['model']} mbs{r['mbs']} seq{r['seq']}"
        rows.append(Row("model", case, r["measured_s"], r.get("predicted_s"), stage.t_f + stage.t_b + sync))
    return rows


def error_summary(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Median and max |error| (%) per section and overall, before and now."""
    out = {}
    for section in (*SECTIONS, "all"):
        part = [r for r in rows if section in ("all", r.section)]
        if not part:
            continue
        now = [abs(r.now_pct) for r in part]
        before = [abs(r.before_pct) for r in part if r.before_pct is not None]
        out[section] = {"count": len(part), "now_median": statistics.median(now), "now_max": max(now)}
        if before:
            out[section] |= {"before_median": statistics.median(before), "before_max": max(before)}
    return out


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def _fmt_pct(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:+.1f}%"


def render(rows: list[Row], summary: dict, title: str, markdown: bool) -> str:
    header = ("case", "measured", "before", "err", "now", "err")
    lines = [f"{'## ' if markdown else ''}{title}", ""]
    for section in SECTIONS:
        part = [r for r in rows if r.section == section]
        if not part:
            continue
        table = [(r.case, _fmt_time(r.measured_s), _fmt_time(r.before_s), _fmt_pct(r.before_pct),
                  _fmt_time(r.now_s), _fmt_pct(r.now_pct)) for r in part]
        lines += [f"{'### ' if markdown else '== '}{section}", ""] + _table(header, table, markdown) + [""]
    stats = []
    for section, s in summary.items():
        stats.append((section, str(s["count"]),
                      f"{s['before_median']:.1f}%" if "before_median" in s else "-",
                      f"{s['before_max']:.1f}%" if "before_max" in s else "-",
                      f"{s['now_median']:.1f}%", f"{s['now_max']:.1f}%"))
    lines += [f"{'### ' if markdown else '== '}|error| summary", ""]
    lines += _table(("section", "n", "before median", "before max", "now median", "now max"), stats, markdown)
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
               ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header)] + [fmt.format(*r) for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="JSON written by bench/gpu_calibrate.py --out")
    ap.add_argument("--family", choices=("h100", "h200", "cpu"), help="system presets to compare with "
                    "(default: from the report's device name)")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables (for docs/planner.md)")
    args = ap.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    family = args.family or family_of(report.get("device", ""))
    rows = compare(report, family)
    if not rows:
        raise SystemExit(f"{args.report}: no gemm, collectives or model measurements")
    title = f"{report.get('device', '?')} x{report.get('gpus', '?')} vs the {family}-xN presets"
    print(render(rows, error_summary(rows), title, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
