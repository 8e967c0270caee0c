"""Helpers for the trainer tests: launch ``alphaexa train`` as real processes and read what a run wrote."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rank_processes import run_cli

from alphaexa.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "debug.toml"
HANG_GUARD_S = 300  # a run that takes longer than this is hung, not slow


def train_command(run_dir: Path, *sets: str, nproc: int | None = None, resume: bool = False,
                  stop_at: int | None = None, config: Path | None = DEBUG_CONFIG, plan: Path | None = None,
                  backend: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "alphaexa", *(("--backend", backend) if backend else ()), "train",
           "--run-dir", str(run_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    if plan is not None:
        cmd += ["--plan", str(plan)]
    for item in sets:
        cmd += ["--set", item]
    if nproc is not None:
        cmd += ["--nproc", str(nproc)]
    if resume:
        cmd.append("--resume")
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    return cmd


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ALPHAEXA_BACKEND", None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def train(run_dir: Path, *sets: str, cache_dir: Path, check: bool = True, env: dict[str, str] | None = None,
          fresh: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """``env``: variables added to run_env()'s; ``fresh``: a fresh interpreter (rank_processes.run_cli)."""
    cmd = train_command(run_dir, *sets, f"data.cache_dir={cache_dir}", **kwargs)
    done = run_cli(cmd, env={**run_env(), **(env or {})}, cwd=REPO, timeout=HANG_GUARD_S, fresh=fresh)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def steps(run_dir: Path) -> dict[int, dict]:
    """The final record of every training step, by step."""
    return {r["step"]: r for r in read_metrics(run_dir)[0]}


def losses(run_dir: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in steps(run_dir).items()}


def copy_checkpoint_run(source: Path, target: Path, step: int) -> None:
    """A run directory holding only ``source``'s checkpoint of ``step`` (as if the run had stopped there)."""
    name = f"step_{step:06d}"
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / name, target / "checkpoints" / name)
    (target / "checkpoints" / "latest").write_text(name + "\n")
    shutil.copyfile(source / "config.toml", target / "config.toml")
