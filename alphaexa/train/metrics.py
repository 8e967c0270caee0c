"""``metrics.jsonl``, the progress line and optional TensorBoard: rank 0 writes, the others hold nothing.

``metrics.jsonl`` (directly in the run directory) has one JSON object per line:

* a training step: ``step, loss, lr, grad_norm, tokens_per_s, mfu, mem_gib, aux_loss, z_loss,
  expert_load, dropped_fraction, expert_load_per_layer, dropped_fraction_per_layer, skipped,
  skipped_total, spike, consumed_samples, overlapped, step_time_s, time`` (the expert figures are null for
  dense models; the per-layer ones map a block index to that block's shares);
* an evaluation: ``{"eval": true, "step", "loss", "perplexity", "tokens", "time"}``;
* an event (start, resume, rollback, end): ``{"event": NAME, "step", "time", ...}``.

A resumed run appends; steps redone after a crash or a rollback appear again after the event
line that explains them, and the latest line for a step is the one that counts (``read_metrics``).
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import UserError

METRICS_FILE = "metrics.jsonl"
STEP_KEYS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gib", "aux_loss", "z_loss",
             "expert_load", "dropped_fraction", "expert_load_per_layer", "dropped_fraction_per_layer", "skipped",
             "skipped_total", "spike", "consumed_samples", "overlapped", "step_time_s", "time")
# Under train/ in TensorBoard; the expert figures go under experts/ (all layers, and per layer).
TENSORBOARD_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gib", "aux_loss", "z_loss",
                       "dropped_fraction")


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/inf; a skipped step's non-finite loss is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, progress: bool, tensorboard: bool, log_every: int = 1):
        self.path = Path(run_dir) / METRICS_FILE
        self.total_steps = total_steps
        self.progress = progress
        self.log_every = log_every
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the run's lifetime
        self._recent_step_times: deque[float] = deque(maxlen=20)
        self._tensorboard = None
        if tensorboard:
            if not tensorboard_available():
                raise UserError("logging.tensorboard=true needs the tensorboard package (pip install tensorboard)")
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def _write(self, record: dict[str, Any]) -> None:
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")

    def step(self, record: dict[str, Any]) -> None:
        self._write(record)
        self._recent_step_times.append(record["step_time_s"])
        if self._tensorboard is not None:
            self._tensorboard_step(record)
        step = record["step"]
        if self.progress and (step % self.log_every == 0 or step == self.total_steps):
            print(self._progress_line(record), flush=True)

    def _tensorboard_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        scalars = {f"train/{key}": record.get(key) for key in TENSORBOARD_SCALARS}
        scalars.update({f"experts/load_{e}": share for e, share in enumerate(record.get("expert_load") or [])})
        for layer, shares in (record.get("expert_load_per_layer") or {}).items():
            scalars.update({f"experts/layer_{layer}/load_{e}": share for e, share in enumerate(shares)})
        for layer, fraction in (record.get("dropped_fraction_per_layer") or {}).items():
            scalars[f"experts/layer_{layer}/dropped_fraction"] = fraction
        for tag, value in scalars.items():
            if value is not None and math.isfinite(value):
                self._tensorboard.add_scalar(tag, value, step)

    def _progress_line(self, r: dict[str, Any]) -> str:
        mean_step = sum(self._recent_step_times) / len(self._recent_step_times)
        eta = _duration(mean_step * (self.total_steps - r["step"]))
        loss = f"{r['loss']:.4f}" if r["loss"] is not None and math.isfinite(r["loss"]) else "nan"
        parts = [f"step {r['step']:>{len(str(self.total_steps))}}/{self.total_steps}", f"loss {loss}",
                 f"lr {r['lr']:.2e}", f"gnorm {r['grad_norm']:.3f}", f"{_si(r['tokens_per_s'])} tok/s",
                 f"mfu {100 * r['mfu']:.2f}%", f"mem {r['mem_gib']:.2f} GiB"]
        if r.get("aux_loss") is not None:
            parts.append(f"aux {r['aux_loss']:.3f}")
        if r.get("skipped"):
            parts.append("SKIPPED (non-finite)")
        if r.get("spike"):
            parts.append("SPIKE")
        parts.append(f"ETA {eta}")
        return " | ".join(parts)

    def eval(self, record: dict[str, Any]) -> None:
        self._write({"eval": True, **record})
        if self._tensorboard is not None:
            self._tensorboard.add_scalar("eval/loss", record["loss"], record["step"])
            self._tensorboard.add_scalar("eval/perplexity", record["perplexity"], record["step"])
        if self.progress:
            print(f"eval  step {record['step']} | loss {record['loss']:.4f} | perplexity {record['perplexity']:.2f}"
                  f" | {record['tokens']} tokens", flush=True)

    def event(self, name: str, **fields: Any) -> None:
        self._write({"event": name, **fields, "time": time.time()})

    def note(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(steps, evals, events) of a run; for a step or evaluation logged twice (redone after a resume
    or a rollback) the later line wins, and the lists are in step order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no {METRICS_FILE} (is it a run directory?)")
    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    events: list[dict] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # The last line of a run killed mid-write may be cut short; anything else is damage.
            if n == len(path.read_text().splitlines()):
                continue
            raise UserError(f"{path}:{n}: not a JSON line") from None
        if "event" in record:
            events.append(record)
        elif record.get("eval"):
            evals[record["step"]] = record
        else:
            steps[record["step"]] = record
    return [steps[s] for s in sorted(steps)], [evals[s] for s in sorted(evals)], events


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
