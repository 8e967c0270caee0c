"""CheckpointManager: sharded, asynchronous, atomic, verified checkpoints on top of DCP.

Every public method is collective: call it on every rank of the job (the ranks of
``process_group``), in the same order. A save writes ``step_N.tmp/`` with
``torch.distributed.checkpoint`` (each rank its own shards), then every rank hashes the
files it wrote, rank 0 writes ``manifest.json`` and renames the directory to ``step_N/``
and finally repoints ``latest``; so a crash at any moment leaves either the previous
checkpoints or a complete new one. Collectives run on a dedicated gloo group so an
asynchronous save never interleaves with the training's own collectives.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.checkpoint.stateful import Stateful

import alphaexa
from alphaexa.config import ConfigError, ModelConfig
from alphaexa.errors import UserError

from .files import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    TMP_SUFFIX,
    ManifestError,
    candidate_dirs,
    check_file,
    data_files,
    file_digest,
    publish,
    read_manifest,
    remove_leftovers,
    step_dir_name,
)
from .state import RNGState

log = logging.getLogger("alphaexa.checkpoint")
# A single process (``alphaexa generate``, tests) is a supported use, not something to warn about.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                        category=UserWarning)

COMPRESSIONS = ("none", "zstd")
ASYNC_MODES = {"thread": AsyncCheckpointerType.THREAD, "process": AsyncCheckpointerType.PROCESS}
# Manifest keys the manager writes; manifest_extra may not reuse them.
RESERVED_KEYS = ("format", "version", "step", "created", "world_size", "checkpoint_ranks", "torch_version",
                 "alphaexa_version", "model", "contents", "save", "files")
# ModelConfig fields that decide whether weights fit a model (in field order); the rest
# (name, loss coefficients, capacity, rope scaling, ...) may change between runs.
ARCHITECTURE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "ffn_type",
                       "vocab_size", "pos_encoding", "norm", "moe_layers", "n_experts", "moe_d_ff",
                       "n_shared_experts", "tie_embeddings", "tokenizer")
_RANK_FILE = re.compile(r"^__(\d+)_")
# Manifest key of a checkpoint holding model weights and nothing else (``alphaexa import``).
WEIGHTS_ONLY_KEY = "weights_only"


def _architecture_value(cfg: ModelConfig, field: str) -> Any:
    # moe_every=2 and moe_layers=[1, 3] describe the same blocks: compare the blocks.
    return cfg.moe_layer_indices() if field == "moe_layers" else getattr(cfg, field)


def _state_dicts(app_state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.state_dict() if isinstance(v, Stateful) else v for k, v in app_state.items()}


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a state dict into DCP's keys: mappings and lists holding tensors or mappings are entered."""
    if isinstance(tree, Mapping):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list) and any(isinstance(v, (torch.Tensor, Mapping, list)) for v in tree):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else k))
    return out


def _shape(size: Any) -> list[int]:
    return [int(s) for s in size]


def _fresh_stager(options: StagingOptions) -> DefaultStager:
    """A new DCP stager for one asynchronous save.

    A stager is never reused: on torch 2.11 the second save through a reused
    DefaultStager failed inside its copy (``KeyError: <class 'type'>``, seen on an H200
    with the stager both closed and kept open by us), so each save stages through its
    own, and the previous one is released with the save that used it.  The cost is a
    fresh host buffer per save instead of a cached one.
    """
    return DefaultStager(options)


class CheckpointManager:
    """Save, find, verify and load checkpoints under ``root_dir``.

    ``app_state`` (for save and load) maps names to Stateful objects (``ModelOptimizerState``,
    ``RNGState``, LR schedulers, samplers), plain dicts (updated in place on load) or plain
    values (replaced in ``app_state`` on load). Non-tensor values must be equal on every rank
    unless their key differs per rank (DCP keeps one copy of each key).

    ``keep_last``: complete checkpoints to keep (None keeps all). ``async_save``: the save
    returns once the state is copied to host memory; the write, checksums and rename finish
    in the background (``async_mode`` "thread" or "process" picks DCP's executor).
    ``process_group``: where the checkpoint's collectives run; by default a new gloo group
    over all ranks, created here (so construct the manager on every rank).
    ``model_config``: written into every manifest and compared with a checkpoint's before
    loading it. ``verify_checksums``: False checks only file presence and sizes on load.
    ``compress``: "zstd" writes every tensor stream through DCP's ZStandard transform (checksums
    are of the compressed files); loading needs no option, the transform is in DCP's metadata.
    """

    def __init__(self, root_dir: str | os.PathLike, keep_last: int | None = 3, async_save: bool = False,
                 process_group: dist.ProcessGroup | None = None, *, async_mode: str = "thread",
                 model_config: ModelConfig | Mapping[str, Any] | None = None, verify_checksums: bool = True,
                 compress: str = "none"):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        if async_mode not in ASYNC_MODES:
            raise ValueError(f"async_mode must be one of {', '.join(ASYNC_MODES)}, got {async_mode!r}")
        if compress not in COMPRESSIONS:
            raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
        if compress == "zstd" and not ZStandard.is_available():
            raise UserError("checkpoint.compress=zstd needs the zstandard package (pip install zstandard)")
        self.compress = compress
        self.root = Path(root_dir)
        self.keep_last = keep_last
        self.async_save = async_save
        self.async_mode = async_mode
        self.verify_checksums = verify_checksums
        if isinstance(model_config, Mapping):
            model_config = ModelConfig.from_dict(dict(model_config))
        self.model_config = model_config
        self._distributed = dist.is_available() and dist.is_initialized()
        if async_save and async_mode == "process" and not self._distributed:
            raise ValueError("async_mode='process' needs an initialised torch.distributed process group "
                             "(its writer process joins one); use async_mode='thread'")
        if self._distributed:
            self.process_group = process_group or dist.new_group(backend="gloo")
            self.rank = dist.get_rank(self.process_group)
            self.ranks = dist.get_world_size(self.process_group)
            self.world_size = dist.get_world_size()
        else:
            self.process_group = None
            self.rank, self.ranks, self.world_size = 0, 1, 1
        self._pending: Future | None = None
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-finish") \
            if async_save else None
        # Host buffers for staging: pinned on CUDA; shared memory when a separate process writes them.
        self._staging_options = StagingOptions(
            use_pinned_memory=torch.cuda.is_available(), use_shared_memory=async_mode == "process",
            use_async_staging=False, use_non_blocking_copy=False)

    # ------------------------------------------------------------ collectives
    def _all_gather(self, obj: Any) -> list[Any]:
        if not self._distributed:
            return [obj]
        out: list[Any] = [None] * self.ranks
        dist.all_gather_object(out, obj, group=self.process_group)
        return out

    def _from_rank0(self, obj: Any) -> Any:
        if not self._distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, group=self.process_group, group_src=0)
        return box[0]

    def _agree(self, local_error: str | None) -> str | None:
        """The first rank's error, on every rank, so that all ranks raise or none does."""
        return next((e for e in self._all_gather(local_error) if e), None)

    # ------------------------------------------------------------------- save
    def save(self, step: int, app_state: Mapping[str, Any], manifest_extra: Mapping[str, Any] | None = None) -> None:
        """Checkpoint ``app_state`` as ``step``; with async_save, returns once the state is staged.

        ``manifest_extra`` (JSON-serialisable: the resolved config, the layout, ...) is
        stored at the top level of the manifest. Waits for the previous save first.
        """
        self.wait()
        started = time.perf_counter()
        extra = dict(manifest_extra or {})
        clash = sorted(set(extra) & set(RESERVED_KEYS))
        if clash:
            raise ValueError(f"manifest_extra may not set {', '.join(clash)}: the manager writes them")
        json.dumps(extra)  # a TypeError now, not in the background after the data was written
        tmp = self.root / (step_dir_name(step) + TMP_SUFFIX)
        prepare_error = None
        if self.rank == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                remove_leftovers(self.root)  # earlier saves are finished (waited), so these are from crashes
                tmp.mkdir()
            except OSError as e:
                prepare_error = f"cannot create {tmp}: {e.strerror or e}"
        prepare_error = self._from_rank0(prepare_error)  # also keeps the others out until the directory exists
        if prepare_error:
            raise UserError(f"checkpoint step {step}: {prepare_error}")
        contents = {k: type(v).__name__ for k, v in app_state.items()}
        state = _state_dicts(app_state)
        # DCP records the transform in its metadata, so any reader (another world size too) undoes it.
        writer = dcp.FileSystemWriter(tmp, single_file_per_rank=True, sync_files=True,
                                      _extensions=[ZStandard()] if self.compress == "zstd" else None)
        if not self.async_save:
            dcp.save(state, storage_writer=writer, process_group=self.process_group, no_dist=not self._distributed)
            timing = {"mode": "sync", "compress": self.compress, "write_s": time.perf_counter() - started}
            self._finish(step, tmp, extra, contents, timing)
            return
        upload = dcp.async_save(state, storage_writer=writer, process_group=self.process_group,
                                async_checkpointer_type=ASYNC_MODES[self.async_mode],
                                async_stager=_fresh_stager(self._staging_options),
                                no_dist=not self._distributed)
        blocking = time.perf_counter() - started

        def finish_in_background() -> None:
            upload.result()
            timing = {"mode": f"async-{self.async_mode}", "compress": self.compress, "blocking_s": blocking,
                      "write_s": time.perf_counter() - started}
            self._finish(step, tmp, extra, contents, timing)

        self._pending = self._finisher.submit(finish_in_background)

    def wait(self) -> None:
        """Block until the pending asynchronous save is complete; re-raises its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the pending save and release the staging buffers and the background thread."""
        self.wait()
        if self._finisher is not None:
            self._finisher.shutdown(wait=True)
            self._finisher = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owner(self, name: str) -> int:
        """Which rank hashes a file: the one that wrote it (its page cache is warm), else rank 0."""
        match = _RANK_FILE.match(name)
        return int(match.group(1)) if match and int(match.group(1)) < self.ranks else 0

    def _finish(self, step: int, tmp: Path, extra: dict[str, Any], contents: dict[str, str],
                timing: dict[str, Any]) -> None:
        hashing_started = time.perf_counter()
        try:
            digests: dict[str, Any] | str = {n: file_digest(tmp / n) for n in data_files(tmp)
                                             if self._owner(n) == self.rank}
        except OSError as e:
            digests = f"rank {self.rank}: {e}"
        gathered = self._all_gather(digests)
        error = next((g for g in gathered if isinstance(g, str)), None)  # the same on every rank
        if error is None:
            publish_error = None
            if self.rank == 0:
                timing["checksum_s"] = time.perf_counter() - hashing_started
                try:
                    self._publish(step, tmp, {n: d for part in gathered for n, d in part.items()},
                                  extra, contents, timing)
                # Any failure must reach the other ranks, or they wait in the broadcast forever.
                except Exception as e:  # noqa: BLE001
                    publish_error = f"rank 0: {type(e).__name__}: {e}"
            error = self._from_rank0(publish_error)
        if error:
            raise RuntimeError(f"checkpoint {step_dir_name(step)} was not completed ({error})")

    def _publish(self, step: int, tmp: Path, files: dict[str, Any], extra: dict[str, Any],
                 contents: dict[str, str], timing: dict[str, Any]) -> None:
        """Rank 0: manifest, rename into place, repoint ``latest``, drop old checkpoints."""
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "world_size": self.world_size, "checkpoint_ranks": self.ranks,
            "torch_version": torch.__version__, "alphaexa_version": alphaexa.__version__,
            "model": self.model_config.to_dict() if self.model_config is not None else None,
            "contents": contents, "save": timing, "files": files, **extra,
        }
        publish(self.root, tmp, step, manifest, self.keep_last)

    # ------------------------------------------------------------------- load
    def load_latest(self, app_state: Mapping[str, Any],
                    weights_only_state: Mapping[str, Any] | None = None) -> int | None:
        """Load the newest good checkpoint into ``app_state``; returns its step, None if there is none.

        Corrupt or incomplete checkpoints are skipped with one warning line naming what is
        wrong and which checkpoint is used instead. Raises UserError if checkpoints exist but
        none is usable, or if the usable one is from a different model. A weights-only
        checkpoint (its manifest says ``weights_only``) loads into ``weights_only_state``
        instead, when given: the rest of the training state then starts fresh.
        """
        self.wait()
        candidates = self._from_rank0([str(p) for p in candidate_dirs(self.root)] if self.rank == 0 else None)
        problems = []
        for candidate in map(Path, candidates):
            problem, manifest = self._verify(candidate)
            if problem is None:
                if problems and self.rank == 0:
                    log.warning("%s; using %s", "; ".join(problems), candidate.name)
                if manifest.get(WEIGHTS_ONLY_KEY) and weights_only_state is not None:
                    app_state = weights_only_state
                return self._load_verified(candidate, manifest, app_state)
            problems.append(f"checkpoint {candidate.name} is corrupt ({problem})")
        if problems:
            raise UserError(f"no usable checkpoint in {self.root}: {'; '.join(problems)}")
        return None

    def load(self, step_or_path: int | str | os.PathLike, app_state: Mapping[str, Any]) -> int:
        """Load one checkpoint (a step number under root_dir, or a checkpoint directory); returns its step."""
        self.wait()
        path = self.root / step_dir_name(step_or_path) if isinstance(step_or_path, int) else Path(step_or_path)
        if not path.is_dir():
            raise UserError(f"checkpoint {path} does not exist")
        problem, manifest = self._verify(path)
        if problem is not None:
            raise UserError(f"checkpoint {path} is corrupt ({problem})")
        return self._load_verified(path, manifest, app_state)

    def _verify(self, path: Path) -> tuple[str | None, dict[str, Any] | None]:
        """(problem, manifest): the manifest from rank 0, the listed files checked by all ranks in turn."""
        if self.rank == 0:
            try:
                found: dict[str, Any] | str = read_manifest(path)
            except ManifestError as e:
                found = str(e)
        else:
            found = None
        found = self._from_rank0(found)
        if isinstance(found, str):
            return found, None
        manifest = found
        listed = manifest["files"]
        mine = sorted(listed)[self.rank::self.ranks]
        local = [(n, p) for n in mine if (p := check_file(path, n, listed[n], self.verify_checksums))]
        problems = sorted(p for part in self._all_gather(local) for p in part)
        return (problems[0][1] if problems else None), manifest

    def _load_verified(self, path: Path, manifest: dict[str, Any], app_state: Mapping[str, Any]) -> int:
        step = int(manifest["step"])
        self._check_model_config(path, manifest)
        metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
        same_world = manifest["world_size"] == self.world_size
        state: dict[str, Any] = {}
        for key, value in app_state.items():
            if isinstance(value, RNGState):
                own = value.state_dict()
                if same_world and all(f"{key}.{r}.python" in metadata for r in own):
                    # Only the generators the checkpoint has (a CPU checkpoint on a GPU run has no CUDA state).
                    state[key] = {r: {n: s for n, s in gens.items() if f"{key}.{r}.{n}" in metadata}
                                  for r, gens in own.items()}
                continue
            state[key] = value.state_dict() if isinstance(value, Stateful) else value
        # Pipeline stages load different entries: agree on one verdict so no rank enters the load alone.
        mismatch = self._agree(self._entry_mismatch(path, state, metadata))
        if mismatch:
            raise UserError(mismatch)
        dcp.load(state, storage_reader=dcp.FileSystemReader(path), process_group=self.process_group,
                 no_dist=not self._distributed)
        for key, value in app_state.items():
            if key not in state:
                continue
            if isinstance(value, Stateful):
                value.load_state_dict(state[key])
            else:
                app_state[key] = state[key]  # type: ignore[index]
        reseeded = [v for k, v in app_state.items() if isinstance(v, RNGState) and k not in state]
        for rng in reseeded:
            rng.reseed(step)
        if reseeded and self.rank == 0:
            log.warning("checkpoint %s was saved by %d ranks, this run has %d: random states re-seeded from "
                        "seed %d, step %d and rank (not restored)", path.name, manifest["world_size"],
                        self.world_size, reseeded[0].seed, step)
        if self.rank == 0:
            log.info("loaded checkpoint %s (step %d)", path, step)
        return step

    def _check_model_config(self, path: Path, manifest: dict[str, Any]) -> None:
        if self.model_config is None or manifest.get("model") is None:
            return
        try:
            saved = ModelConfig.from_dict(manifest["model"], where=f"{path / MANIFEST_NAME} model")
        except ConfigError as e:
            raise UserError(f"checkpoint {path}: its model config is not usable here ({e})") from None
        for field in ARCHITECTURE_FIELDS:
            there, here = _architecture_value(saved, field), _architecture_value(self.model_config, field)
            if there != here:
                raise UserError(f"checkpoint {path} is from a different model: model.{field} is {there!r} "
                                f"there, {here!r} here")

    @staticmethod
    def _entry_mismatch(path: Path, state: dict[str, Any], metadata: Mapping[str, Any]) -> str | None:
        """Why ``state`` cannot be loaded from the checkpoint (a missing entry, another tensor shape), or None."""
        for key, value in _leaves(state).items():
            saved = metadata.get(key)
            if saved is None:
                return f"checkpoint {path} does not match this run: it has no '{key}'"
            if isinstance(value, torch.Tensor):
                if not isinstance(saved, TensorStorageMetadata):
                    return f"checkpoint {path} does not match this run: '{key}' is not a tensor there"
                if _shape(saved.size) != _shape(value.shape):
                    return (f"checkpoint {path} is from a different model: {key} has shape "
                            f"{_shape(saved.size)} there, {_shape(value.shape)} here")
        return None
