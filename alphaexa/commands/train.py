"""``alphaexa train``: train a model from a run config, under torchrun / mpiexec / SLURM or with --nproc."""
from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a model from a run config (TOML/YAML/JSON); --nproc N runs N local ranks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="run config (default with --resume: RUN_DIR/config.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set train.steps=200 --set parallel.dp_shard=2")
    parser.add_argument("--plan", metavar="PLAN.json", help="take the layout of plans[0] from `alphaexa plan --out`")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="spawn N local ranks (without it: the ranks a launcher started, or one)")
    parser.add_argument("--run-dir", metavar="DIR", help="where the run writes (default: runs/NAME-TIMESTAMP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR's newest good checkpoint (a fresh start when it has none)")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="end this launch after STEP (checkpointed), as a preemption would; the schedule "
                             "still spans train.steps and --resume continues")


def run(args: argparse.Namespace) -> int:
    import datetime
    import os
    from pathlib import Path

    from backends.launch import detect_launch

    from ..errors import UserError
    from ..train.config import load_run_config
    from ..train.preflight import preflight

    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir DIR (the run to continue)")
    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise UserError("give --config FILE (or --resume --run-dir DIR to reuse DIR/config.toml)")
        config_path = Path(args.run_dir) / "config.toml"
        if not config_path.is_file():
            raise UserError(f"{args.run_dir} holds no config.toml; give --config FILE")
    cfg = load_run_config(config_path, args.overrides, plan=args.plan)
    launch = detect_launch()
    if args.nproc is not None:
        if args.nproc < 1:
            raise UserError(f"--nproc must be >= 1, got {args.nproc}")
        if launch.world_size > 1:
            raise UserError(f"--nproc {args.nproc} inside a {launch.launcher} launch of {launch.world_size} "
                            f"processes: use one or the other")
    world = args.nproc or launch.world_size
    if args.stop_at is not None and not 1 <= args.stop_at <= cfg.train.steps:
        raise UserError(f"--stop-at {args.stop_at}: must be between 1 and train.steps={cfg.train.steps}")
    stem = Path(config_path).stem if args.config else "run"
    run_dir = Path(args.run_dir) if args.run_dir else \
        Path("runs") / f"{stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    preflight(cfg, world, run_dir, args.resume)

    if args.nproc is None or args.nproc == 1 and launch.world_size == 1 and os.environ.get("RANK") is None:
        if args.plan and launch.rank == 0:
            _keep_plan(Path(args.plan), run_dir)
        from ..train.trainer import Trainer

        status = Trainer(cfg, run_dir, resume=args.resume, stop_at=args.stop_at).run()
        # A clean exit tears the process group down (NCCL warns of leaked resources otherwise); after
        # an error it is left to the process exit, since a peer may still be inside a collective.
        from backends.launch import destroy_distributed

        destroy_distributed()
        return status

    # The parent prepares what every rank would otherwise redo (tokenizing, the run directory) and
    # hands the ranks the resolved config.
    from ..train.dataset import prepare_dataset
    from ..train.spawn import rank_start, spawn_ranks

    start = rank_start()  # before the data work: a bad ALPHAEXA_RANK_START is a one-line error at once
    prepare_dataset(cfg.data, cfg.model, progress=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.toml")
    if args.plan:
        _keep_plan(Path(args.plan), run_dir)
    argv = ["train", "--config", str(run_dir / "config.toml"), "--run-dir", str(run_dir)]
    if args.resume:
        argv.append("--resume")
    if args.stop_at is not None:
        argv += ["--stop-at", str(args.stop_at)]
    code = spawn_ranks(world, argv, start=start)
    if code == 0:
        print(f"run directory: {run_dir.resolve()}", flush=True)
    return code


def _keep_plan(plan, run_dir) -> None:
    """The plan the run was started from goes into the run directory as plan.json."""
    import shutil

    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "plan.json"
    if not (target.exists() and target.samefile(plan)):
        shutil.copyfile(plan, target)
