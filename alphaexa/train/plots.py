"""PNG curves of a run (matplotlib with the Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def plot_run(steps: list[dict], evals: list[dict], out_dir: Path) -> list[Path]:
    """loss.png (training and held-out loss), throughput.png (tokens/s and MFU) and, for MoE
    runs, expert_load.png (each expert's share of routed tokens per step)."""
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
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.06, 1, 1) if fig.legends else None)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
