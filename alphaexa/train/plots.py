"""PNG curves of a run (matplotlib with the Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def plot_run(steps: list[dict], evals: list[dict], out_dir: Path, plan: dict | None = None) -> list[Path]:
    """loss.png (training and held-out loss), throughput.png (tokens/s and MFU); for MoE runs
    expert_load.png (each expert's share of routed tokens per step, all layers) and
    expert_heatmap.png (the same per MoE layer); with ``plan`` (a plan.json the run started from)
    step_breakdown.png (the planner's predicted step beside the measured one)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("alphaexa plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    x = [r["step"] for r in steps]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    trained = [(r["step"], r["loss"]) for r in steps if r["loss"] is not None and not r.get("skipped")]
    ax.plot([s for s, _ in trained], [v for _, v in trained], label="train", linewidth=1)
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["tokens_per_s"] for r in steps], linewidth=1, color="tab:blue")
    ax.set(xlabel="step", ylabel="tokens/s", title="Throughput")
    ax.grid(alpha=0.3)
    mfu = ax.twinx()
    mfu.plot(x, [100 * r["mfu"] for r in steps], linewidth=1, color="tab:orange")
    mfu.set_ylabel("MFU (%)", color="tab:orange")
    written.append(_save(fig, out_dir / "throughput.png"))

    loads = [(r["step"], r["expert_load"]) for r in steps if r.get("expert_load")]
    if loads:
        fig, ax = plt.subplots(figsize=(7, 4))
        n_experts = len(loads[0][1])
        ax.stackplot([s for s, _ in loads], *[[load[e] for _, load in loads] for e in range(n_experts)],
                     labels=[f"expert {e}" for e in range(n_experts)])
        ax.set(xlabel="step", ylabel="share of routed tokens", title="Expert load (all MoE layers)", ylim=(0, 1))
        fig.legend(loc="lower center", fontsize="small", ncol=min(8, n_experts), frameon=False)
        fig.subplots_adjust(bottom=0.2)
        written.append(_save(fig, out_dir / "expert_load.png"))
    per_layer = [(r["step"], r["expert_load_per_layer"]) for r in steps if r.get("expert_load_per_layer")]
    if per_layer:
        written.append(_expert_heatmap(plt, per_layer, out_dir / "expert_heatmap.png"))
    if plan and plan.get("plans") and steps:
        written.append(_step_breakdown(plt, plan["plans"][0], steps, out_dir / "step_breakdown.png"))
    return written


def _expert_heatmap(plt, per_layer: list[tuple[int, dict]], path: Path) -> Path:
    """One row of panels per MoE layer: experts down, steps across, colour = share of that layer's tokens."""
    import numpy as np

    layers = sorted(per_layer[0][1], key=int)
    n_experts = len(per_layer[0][1][layers[0]])
    x = [s for s, _ in per_layer]
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.2 + 1.1 * len(layers) + 0.12 * n_experts * len(layers)),
                             sharex=True, squeeze=False)
    even = 1 / n_experts
    image = None
    for ax, layer in zip(axes[:, 0], layers):
        shares = np.array([loads[layer] for _, loads in per_layer]).T  # (experts, steps)
        image = ax.imshow(shares, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=min(1, 3 * even),
                          extent=(x[0] - 0.5, x[-1] + 0.5, -0.5, n_experts - 0.5), interpolation="nearest")
        ax.set_ylabel(f"block {layer}\nexpert")
        ax.set_yticks(range(n_experts))
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"Expert load per MoE layer (share of the layer's routed tokens; even = {even:.2f})")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="share", fraction=0.04, pad=0.02)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# The parts of the planner's step time, in the order they are stacked (dp_comm_total_s is not a
# part: it counts overlapped communication too).
_PREDICTED_PARTS = (("compute_s", "compute"), ("recompute_s", "recompute"), ("tp_comm_s", "TP comm"),
                    ("ep_comm_s", "EP all-to-all"), ("cp_comm_exposed_s", "CP comm (exposed)"),
                    ("dp_comm_exposed_s", "DP comm (exposed)"), ("pp_comm_s", "PP send/recv"),
                    ("bubble_s", "pipeline bubble"), ("optimizer_s", "optimizer"))


def _step_breakdown(plt, planned: dict, steps: list[dict], path: Path) -> Path:
    """Two bars: the planner's predicted step, stacked by part, and the measured median step time."""
    import statistics

    breakdown = planned.get("breakdown", {})
    # The first steps of a launch include warm-up (allocation, first collectives): left out when there are enough.
    timed = [r["step_time_s"] for r in steps[2:] or steps if not r.get("skipped")] or [r["step_time_s"] for r in steps]
    measured = statistics.median(timed)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    bottom = 0.0
    for key, label in _PREDICTED_PARTS:
        value = breakdown.get(key, 0.0) * 1e3
        if value > 0:
            ax.bar(0, value, bottom=bottom, label=label, width=0.6)
            bottom += value
    ax.bar(1, measured * 1e3, width=0.6, color="0.45", label="measured (median, not broken down)")
    ax.text(0, bottom, f"{planned.get('step_time_s', bottom / 1e3) * 1e3:.0f} ms", ha="center", va="bottom")
    ax.text(1, measured * 1e3, f"{measured * 1e3:.0f} ms", ha="center", va="bottom")
    import dataclasses

    from topology.layout import Layout

    # Only the fields this Layout knows: a plan written by another version may carry more.
    known = {f.name for f in dataclasses.fields(Layout)}
    layout = Layout.from_dict({k: v for k, v in planned.get("layout", {}).items() if k in known}).short()
    ax.set_xticks([0, 1], ["predicted (planner)", f"measured ({len(timed)} steps)"])
    ax.set(ylabel="ms per optimizer step", title=f"Step time, layout {layout}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def read_plan(run_dir: Path) -> dict | None:
    """The plan.json a run was started from (``--plan``, the demo), or None."""
    import json

    try:
        return json.loads((run_dir / "plan.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.06, 1, 1) if fig.legends else None)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
