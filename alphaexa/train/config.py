"""The run configuration: one file (TOML, YAML or JSON) with the sections below, plus ``--set`` overrides.

Sections (docs/training.md lists every key with its default and meaning)::

    [model]       preset = "tiny-moe" and/or any ModelConfig field
    [train]       steps, seed, global_batch, seq_len, lr, schedule, ... (TrainSection)
    [data]        corpus, tokenizer, cache_dir, val_fraction, ...     (DataSection)
    [parallel]    the Layout fields: tp, pp, vpp, dp_replicate, dp_shard, ep, cp, mbs, ...
                  and engine, offload, nvme_path                      (EngineOptions)
    [checkpoint]  every, keep_last, async                             (CheckpointSection)
    [logging]     tensorboard, progress                              (LoggingSection)
    [debug]       fault injection for tests: nan_at_step, spike_at_step, record_samples

Precedence, lowest first: dataclass defaults < the config file < the plan's layout
(``--plan``) < ``--set section.key=value``.  An unknown section or key, or a value of
the wrong type, is a one-line ConfigError naming ``section.key``.  Nothing here
imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topology.layout import Layout
from topology.modelcfg import ConfigError, ModelConfig, load_mapping, save_mapping
from topology.presets import get_preset
from topology.support import compiled_by_default

SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("fp32", "bf16", "fp64")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for-loop")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # the compile modes that replay CUDA graphs
COMPRESSIONS = ("none", "zstd")
ENGINES = ("native", "deepspeed")
OFFLOADS = ("none", "cpu", "nvme")
# train.activation_memory_budget=auto: the partitioner recomputes the cheap forward ops (docs/performance.md: on the
# 1b shape 0.9 to 0.98 give the same 28.9 GiB peak instead of 38.3; session 12, H100: 0.98 took 1b-moe from 32.0 to
# 25.6 GiB and the Mixtral-like shape from 69.0 to 57.2 GiB, tokens/s within -0.4% and +0.4% of 1.0)
AUTO_MEMORY_BUDGET = 0.98


@dataclass
class TrainSection:
    steps: int = 100  # optimizer steps of the whole run (the schedule's length)
    seed: int = 0  # weights, data order, RNG
    global_batch: int = 16  # sequences per optimizer step, over all data-parallel ranks
    seq_len: int = 128
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # floor of the decay
    warmup: int = 10  # linear warmup steps from 0 to lr
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant (after warmup)
    decay_fraction: float = 0.2  # wsd: share of the steps spent in the final linear decay
    weight_decay: float = 0.1  # on matrices and embeddings, not on norms
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still logged)
    # with fused AdamW: clip inside the optimizer's step (its grad_scale divides each gradient as the kernel
    # loads it) instead of scaling every gradient first; the same clip up to the last bit, one pass less
    clip_in_optimizer: bool = True
    dtype: str = "fp32"  # fp32 | bf16 (bf16 compute, fp32 master weights and gradient reduction) | fp64 (CPU tests)
    optimizer_impl: str = "auto"  # auto | fused | foreach | for-loop (auto: fused on accelerators)
    # torch.compile: auto (on for CUDA without tp or selective recompute) | true | false (alphaexa.parallel refuses
    # the combinations it cannot do)
    compile: bool | str = "auto"
    compile_scope: str = "auto"  # auto (the whole model when no FSDP wrapper splits it, else each block) | block
    # torch.compile's mode: default | max-autotune-no-cudagraphs | reduce-overhead (CUDA graphs) | max-autotune
    compile_mode: str = "default"
    # one GEMM for q, k, v and one for a SwiGLU's up and gate: the weights concatenated in the forward (the
    # parameters, checkpoints and exports stay as they are); not with tensor parallelism
    fused_projections: bool = False
    # the blocks' linear layers in float8 through torchao (CUDA, compute capability 8.9+; not with tp or
    # fused_projections); the LM head and the MoE router stay in bf16
    float8: bool = False
    # the blocks' linear and expert weights stored in bf16, their fp32 masters beside the optimizer's moments and
    # updated in one fused pass (alphaexa.train.master_weights): the autocast forward and gradients bit for bit,
    # without casting every weight each forward and backward.  auto: on where it can run (CUDA with compile, one
    # rank's plain module, train.dtype=bf16, one micro-batch a step, fused/auto optimizer, the clip folded into
    # the step, no float8); true: there or a one-line error saying why not.  Measured in one H100 call (session
    # 15): +2.5% dense 1b, +3.0% 1b-moe, +5.5% Mixtral-like tokens/s (docs/performance.md).  auto by default since
    # session 17, when the update with session 15's bias-correction fix passed its CUDA tests on an H200
    bf16_weights: bool | str = "auto"
    # torch.compile's activation memory budget (torch._functorch.config.activation_memory_budget): below 1,
    # the partitioner recomputes the cheapest forward ops in the backward until the saved activations fit
    # that fraction of what saving everything would keep (1 = save what the min-cut chooses, torch's default)
    # auto: 0.98 (AUTO_MEMORY_BUDGET), with or without MoE blocks (on the 1b shape any budget from 0.9 to 0.98
    # recomputes the same cheap ops, SwiGLU's products and norms, and the peak falls from 38.3 to 28.9 GiB at no
    # measurable cost; 1b-moe and the Mixtral-like shape: docs/performance.md)
    activation_memory_budget: float | str = "auto"
    fused_loss: bool = True  # LM head + cross-entropy in token chunks, never the full fp32 logits (tp1, pp1)
    loss_chunk_tokens: int = 4096  # tokens per chunk of the fused loss: smaller chunks, smaller loss temporaries
    # launch step N+1 before reading step N's figures where nothing in between needs them (the optimizer
    # step queued on the device, no rollback, no evaluation or checkpoint after N): the host's one wait per
    # step then overlaps the device's work instead of idling it
    overlap_steps: bool = True
    # bit-reproducible kernels (torch.use_deterministic_algorithms, cuBLAS's deterministic workspace; the MoE
    # layer's index_add and gather backward then take torch's deterministic kernels instead of atomic adds):
    # slower (the MoE layer 1.14x on an H200).  Ops torch has no deterministic kernel for warn instead of failing.
    deterministic: bool = False
    eval_every: int = 50  # steps between evaluations; 0 = only at the end
    eval_batches: int = 4  # global batches of held-out data per evaluation; 0 = no evaluation at all
    log_every: int = 1  # steps between progress lines (metrics.jsonl gets every step)
    skip_nonfinite: bool = True  # skip the optimizer step when the loss or gradient norm is inf/nan
    loss_spike_factor: float = 0.0  # a loss above factor x the running mean is a spike; 0 = off
    loss_spike_window: int = 20  # steps in the running mean (and steps before spikes are judged)
    loss_spike_rollback: bool = False  # on a spike, reload the last checkpoint (else only count it)
    max_rollbacks: int = 3  # then the run stops with an error instead of looping
    collective_timeout_s: float = 300.0  # a collective waiting longer ends the job (dead rank)

    def validate(self) -> None:
        positive = ("steps", "global_batch", "seq_len", "log_every", "loss_spike_window", "loss_chunk_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 1")
        for name in ("seed", "warmup", "eval_every", "eval_batches", "max_rollbacks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr}: must be > 0")
        budget = self.activation_memory_budget
        if budget != "auto" and (isinstance(budget, (str, bool)) or not 0 < budget <= 1):
            raise ConfigError(f"train.activation_memory_budget={budget}: must be auto or in (0, 1] "
                              "(a fraction of the activations compile would save)")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"train.min_lr={self.min_lr}: must be between 0 and train.lr={self.lr}")
        if self.warmup >= self.steps and self.steps > 1:
            raise ConfigError(f"train.warmup={self.warmup}: must be below train.steps={self.steps}")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(f"train.compile={self.compile!r}: must be auto, true or false")
        _choice("train.compile_scope", self.compile_scope, ("auto", "block"))
        _choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        if isinstance(self.bf16_weights, str) and self.bf16_weights != "auto":
            raise ConfigError(f"train.bf16_weights={self.bf16_weights!r}: must be auto, true or false")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"train.decay_fraction={self.decay_fraction}: must be in (0, 1]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas={self.betas}: must be two numbers in [0, 1)")
        for name in ("weight_decay", "clip", "loss_spike_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if 0 < self.loss_spike_factor <= 1:
            raise ConfigError(f"train.loss_spike_factor={self.loss_spike_factor}: must be > 1 (or 0 = off)")
        if self.eps <= 0:
            raise ConfigError(f"train.eps={self.eps}: must be > 0")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"train.collective_timeout_s={self.collective_timeout_s}: must be > 0")

    def check_cudagraphs(self, device_type: str, layout: Layout, n_micro: int) -> None:
        """CUDA graphs replay into the same output buffers at every call. With 8 micro-batches a step the
        debug preset failed on the H200 (session 6: "accessing tensor output of CUDAGraphs that has been
        overwritten by a subsequent run"): a tensor of one replay is read after the next replay, most
        likely what gradient accumulation keeps between micro-batches; one micro-batch a step ran
        (session 4). Refused, with what to do instead, before the model is built."""
        if (device_type == "cuda" and self.compile_mode in CUDAGRAPH_MODES and n_micro > 1
                and self.compile_on(device_type, layout)):
            raise ConfigError(f"train.compile_mode={self.compile_mode} (CUDA graphs) with {n_micro} micro-batches per "
                              f"step: a replay overwrites what the micro-batch before it left (it fails on CUDA); set parallel.mbs so that "
                              f"one micro-batch makes the step (train.global_batch / data-parallel ranks), or use "
                              f"train.compile_mode=default or max-autotune-no-cudagraphs")

    def bf16_weights_on(self, device_type: str, layout: Layout | None, n_micro: int, *, wrapped: bool,
                        engine: str = "native") -> bool:
        """``bf16_weights`` resolved for the run: auto turns it on where every condition holds, true raises a
        ConfigError naming the first that does not (alphaexa.train.master_weights says why each is needed)."""
        if self.bf16_weights is False:
            return False
        blockers = [
            (self.dtype != "bf16", f"train.dtype={self.dtype} (the copies are bf16: needs train.dtype=bf16)"),
            (engine != "native", f"engine={engine} (DeepSpeed keeps its own master weights)"),
            (wrapped, ("FSDP2 wraps the model (several ranks, offload or parallel.fsdp_on_one_rank): FSDP2 has its "
                      "own mixed precision")),
            (n_micro > 1, (f"{n_micro} micro-batches a step (bf16 gradients would accumulate in bf16): set "
                          f"parallel.mbs so that one micro-batch makes the step")),
            (self.float8, "train.float8=true (float8 casts from the fp32 weights)"),
            (self.optimizer_impl in ("foreach", "for-loop"),
             f"train.optimizer_impl={self.optimizer_impl} (the update is its own fused pass)"),
            (bool(self.clip) and not self.clip_in_optimizer,
             "train.clip_in_optimizer=false (scaling bf16 gradients before the step would round them)"),
        ]
        if self.bf16_weights == "auto":
            blockers.append((device_type != "cuda" or not self.compile_on(device_type, layout), "not compiled on CUDA"))
        for blocked, why in blockers:
            if blocked:
                if self.bf16_weights == "auto":
                    return False
                raise ConfigError(f"train.bf16_weights=true cannot run here: {why}; set train.bf16_weights=false "
                                  f"or auto")
        return True

    def memory_budget(self) -> float:
        """``activation_memory_budget`` resolved: auto is 0.98 (dense and MoE models, measured on both)."""
        if self.activation_memory_budget == "auto":
            return AUTO_MEMORY_BUDGET
        return float(self.activation_memory_budget)

    def compile_on(self, device_type: str, layout: Layout) -> bool:
        """``compile`` resolved for the run.  auto compiles on CUDA, except with tensor parallelism
        (wrong gradients on CPU, unverified on GPUs) and selective recompute (its checkpoint policy
        fails under compile on CPU: docs/parallelism.md)."""
        if self.compile != "auto":
            return bool(self.compile)
        return compiled_by_default(device_type, layout.tp, layout.recompute)


@dataclass
class DataSection:
    # "demo" (the built-in corpus), a tokenized dataset directory (made by `alphaexa tokenize`),
    # a list of text/JSONL/tar files or directories, tokenized once into cache_dir, or WebDataset
    # shards streamed while training: brace patterns, pipe: commands, URLs (or local tars with stream).
    corpus: list[str] = field(default_factory=lambda: ["demo"])
    # auto: what model.tokenizer says (byte, or a SentencePiece model of model.vocab_size ids
    # trained on the corpus); byte | sentencepiece; or a saved tokenizer directory / .model file.
    tokenizer: str = "auto"
    cache_dir: str = ""  # "" = $ALPHAEXA_DATA_CACHE or ~/.cache/alphaexa/data
    val_fraction: float = 0.1  # share of documents held out for evaluation
    split_seed: int = 0  # seed of the train/val split and the tokenizer's line sample
    sp_model_type: str = "bpe"  # bpe | unigram
    text_unit: str = "file"  # file | paragraph | line: what one document of a plain text file is
    prefetch: int = 2  # batches prepared ahead in a background thread
    stream: bool = False  # read local .tar corpus files as WebDataset shards while training (no ingestion)
    stream_workers: int = 2  # worker processes tokenising shards of a streamed corpus (0: in the trainer)

    def validate(self) -> None:
        if not self.corpus:
            raise ConfigError("data.corpus: empty; give \"demo\", a dataset directory or text files")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.val_fraction}: must be in [0, 1)")
        _choice("data.sp_model_type", self.sp_model_type, ("bpe", "unigram"))
        _choice("data.text_unit", self.text_unit, ("file", "paragraph", "line"))
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch={self.prefetch}: must be >= 0")
        if self.stream_workers < 0:
            raise ConfigError(f"data.stream_workers={self.stream_workers}: must be >= 0")

    @property
    def is_demo(self) -> bool:
        return self.corpus == ["demo"]


@dataclass
class CheckpointSection:
    every: int = 50  # steps between checkpoints; 0 = only at the end (the end always saves)
    enabled: bool = True  # false: no checkpoint at all, not even at the end (benchmarks; nothing to resume)
    keep_last: int = 3  # complete checkpoints kept on disk
    async_: bool = True  # write in the background while training continues (TOML key: async)
    compress: str = "none"  # none | zstd (DCP's ZStandard stream transform; needs zstandard)

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"checkpoint.every={self.every}: must be >= 0")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last={self.keep_last}: must be >= 1")
        _choice("checkpoint.compress", self.compress, COMPRESSIONS)


@dataclass
class LoggingSection:
    tensorboard: bool = False  # also write TensorBoard events to RUN_DIR/tensorboard
    progress: bool = True  # the progress line on rank 0

    def validate(self) -> None:
        pass


@dataclass
class DebugSection:
    """Fault injection for tests and drills (0 / false = off)."""

    nan_at_step: int = 0  # multiply that step's loss by NaN before backward (exercises the skip guard)
    spike_at_step: int = 0  # multiply that step's loss by 1000 before backward (exercises spike handling)
    record_samples: bool = False  # every rank appends its sample ids per step to RUN_DIR/samples/rank_R.jsonl
    fail_at_step: int = 0  # raise an error when that step is launched (what a crash in the middle keeps)
    # CUDA only: record every allocation (with its Python stack) from the start of the run and write
    # RUN_DIR/memory_snapshot_rank_R.pickle at its end (bench/memory_peak.py shows what is live at the peak;
    # https://pytorch.org/memory_viz draws it). Slows the host: for diagnosis, not for timing.
    memory_snapshot: bool = False

    def validate(self) -> None:
        for name in ("nan_at_step", "spike_at_step", "fail_at_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"debug.{name}={getattr(self, name)}: must be >= 0")


@dataclass
class EngineOptions:
    """The ``[parallel]`` keys that are not layout fields: which engine runs it and where state is offloaded."""

    engine: str = "native"  # native (FSDP2, every layout) | deepspeed (ZeRO data parallelism)
    offload: str = "none"  # none | cpu (host memory) | nvme (files under nvme_path; deepspeed only)
    nvme_path: str = ""  # local directory on the NVMe disk for offload=nvme
    fsdp_on_one_rank: bool = False  # wrap in FSDP2 even when one rank runs alone (default: plain module + autocast)

    def validate(self) -> None:
        _choice("parallel.engine", self.engine, ENGINES)
        _choice("parallel.offload", self.offload, OFFLOADS)
        if self.offload == "nvme" and self.engine != "deepspeed":
            raise ConfigError("parallel.offload=nvme needs parallel.engine=deepspeed (ZeRO-Infinity); the native "
                              "engine offloads to cpu only")
        if self.offload == "nvme" and not self.nvme_path:
            raise ConfigError("parallel.offload=nvme needs parallel.nvme_path, a local directory on the NVMe disk")


SECTIONS: dict[str, type] = {"train": TrainSection, "data": DataSection, "checkpoint": CheckpointSection,
                             "logging": LoggingSection, "debug": DebugSection}
# Python-side names of keys that are reserved words in Python.
_KEY_ALIASES = {("checkpoint", "async"): "async_"}


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    parallel: Layout = field(default_factory=Layout)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    debug: DebugSection = field(default_factory=DebugSection)
    engine_options: EngineOptions = field(default_factory=EngineOptions)  # the rest of [parallel]
    # The model preset the run started from (kept so that the saved config reads naturally).
    model_preset: str | None = None

    def validate(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate()
        self.model.validate()
        self.engine_options.validate()
        if self.engine_options.offload != "none" and self.parallel.sharding != "zero3":
            raise ConfigError(f"parallel.offload={self.engine_options.offload} needs parallel.sharding=zero3 "
                              f"(parameters, gradients and optimizer state leave the device), not "
                              f"{self.parallel.sharding}")
        if self.train.fused_projections and self.parallel.tp > 1:
            raise ConfigError(f"train.fused_projections=true with parallel.tp={self.parallel.tp}: tensor parallelism "
                              f"shards each projection on its own; turn one of them off")
        if self.train.float8 and (self.parallel.tp > 1 or self.train.fused_projections):
            raise ConfigError("train.float8=true with " + ("parallel.tp > 1" if self.parallel.tp > 1 else
                              "train.fused_projections=true") + ": not supported, turn one of them off")
        if self.train.float8 and self.train.dtype != "bf16":
            raise ConfigError(f"train.float8=true needs train.dtype=bf16 (float8 GEMMs, bf16 elsewhere), "
                              f"not {self.train.dtype}")
        if self.train.bf16_weights is True and self.engine_options.engine != "native":
            # The trainer resolves the option in the native engine's setup only: refused here, not ignored (the
            # layout is read only for auto, so none is needed)
            self.train.bf16_weights_on("cpu", None, 1, wrapped=False, engine=self.engine_options.engine)
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len="
                              f"{self.model.max_seq_len}")
        self.parallel.validate(model=self.model, seq_len=self.train.seq_len)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config (every key), in the file layout ``from_mapping`` reads back."""
        model = self.model.to_dict()
        if self.model_preset is not None:
            model = {"preset": self.model_preset, **model}
        out: dict[str, Any] = {"model": model}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {_file_key(name, k): v for k, v in section.items()}
        out["parallel"] = {**self.parallel.to_dict(), **dataclasses.asdict(self.engine_options)}
        return out

    def save(self, path: str | Path) -> None:
        save_mapping(self.to_dict(), path)

    def layout_for(self, world: int) -> Layout:
        """The parallel layout resolved for ``world`` ranks and checked against model, batch and seq_len."""
        from topology.layout import resolve_layout

        return resolve_layout(self.parallel, world, model=self.model, global_batch=self.train.global_batch,
                              seq_len=self.train.seq_len)


def _file_key(section: str, python_name: str) -> str:
    for (sec, file_key), name in _KEY_ALIASES.items():
        if sec == section and name == python_name:
            return file_key
    return python_name


def _python_key(section: str, file_key: str) -> str:
    return _KEY_ALIASES.get((section, file_key), file_key)


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r}: must be one of {', '.join(choices)}")


# ------------------------------------------------------------------------------------ loading
def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    plan: str | Path | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Read ``path`` (or start from ``base``), apply the plan's layout and ``--set`` overrides, validate."""
    data = _deep_copy(base) if base is not None else {}
    if path is not None:
        data = load_mapping(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, value in data.items():
        if section not in (*SECTIONS, "model", "parallel"):
            raise ConfigError(f"unknown config section {section!r}; known: model, parallel, {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"config section {section!r} must be a table of keys")
    if plan is not None:
        data["parallel"] = {**data.get("parallel", {}), **read_plan_layout(plan)}
    for item in overrides or []:
        section, key, raw = _split_override(item)
        data.setdefault(section, {})[key] = _parse_override(section, key, raw, data)
    return _build(data)


def read_plan_layout(path: str | Path) -> dict[str, Any]:
    """The layout of the best plan in a plan file written by ``alphaexa plan --out``, with the plan's
    engine, offload and nvme_path where it names them (beside its layout or in it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--plan: file not found: {p}")
    try:
        plan = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--plan {p}: not valid JSON ({e})") from None
    best, layout = None, None
    if isinstance(plan, dict):
        plans = plan.get("plans")
        best = plans[0] if isinstance(plans, list) and plans and isinstance(plans[0], dict) else plan
        layout = best.get("layout")
    if not isinstance(layout, dict):
        raise ConfigError(f"--plan {p}: holds no plans[0].layout (write it with `alphaexa plan --out`)")
    known = {f.name for f in dataclasses.fields(Layout)}
    out = {k: v for k, v in layout.items() if k in known}
    for name in (f.name for f in dataclasses.fields(EngineOptions)):
        value = best.get(name, layout.get(name))
        if value is not None:
            out[name] = value
    return out


def _split_override(item: str) -> tuple[str, str, str]:
    match = re.fullmatch(r"([A-Za-z_]\w*)\.([A-Za-z_]\w*)=(.*)", item, flags=re.DOTALL)
    if not match:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.steps=200")
    return match.group(1), match.group(2), match.group(3)


def _field_types(section: str) -> dict[str, Any]:
    if section == "model":
        hints = typing.get_type_hints(ModelConfig)
        return {**hints, "preset": str}
    if section == "parallel":
        return {**typing.get_type_hints(Layout), **typing.get_type_hints(EngineOptions)}
    if section in SECTIONS:
        hints = typing.get_type_hints(SECTIONS[section])
        return {_file_key(section, k): v for k, v in hints.items()}
    raise ConfigError(f"unknown config section {section!r}; known: model, parallel, {', '.join(SECTIONS)}")


def _parse_override(section: str, key: str, raw: str, data: dict[str, Any]) -> Any:
    types = _field_types(section)
    if key not in types:
        raise ConfigError(f"unknown config key {section}.{key}; known: {', '.join(sorted(types))}")
    return _coerce(raw, types[key], f"{section}.{key}")


def _literal(raw: str) -> Any:
    """A TOML literal (3, 1e-3, true, [1, 2], "x") when ``raw`` is one, else the raw string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(raw: str, hint: Any, where: str) -> Any:
    """Convert an override string to the field's type (``int | None``, ``list[float]``, ...)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _union_type()) else (hint,)
    if type(None) in options and raw.strip().lower() in ("none", "null", ""):
        return None
    options = tuple(o for o in options if o is not type(None))
    value = _literal(raw.strip())
    for option in options:
        converted = _convert(value, option)
        if converted is not _NO:
            return converted
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}={raw!r}: must be {names}")


_NO = object()


def _union_type():
    import types

    return types.UnionType


def _convert(value: Any, option: Any) -> Any:
    origin = typing.get_origin(option)
    if origin is list:
        (item_type,) = typing.get_args(option) or (str,)
        items = value if isinstance(value, list) else [_literal(v.strip()) for v in str(value).split(",") if v.strip()]
        converted = [_convert(v, item_type) for v in items]
        return _NO if any(c is _NO for c in converted) else converted
    if option is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text, _NO)
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if option is str:
        return value if isinstance(value, str) else str(value)
    return value


def _check_types(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """File values of the wrong type (a string for an int, ...) become one-line errors too."""
    types = _field_types(section)
    out = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown config key {section}.{key}; known: {', '.join(sorted(types))}")
        if isinstance(value, str) and types[key] is not str:
            value = _coerce(value, types[key], f"{section}.{key}")
        else:
            hint = types[key]
            options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _union_type()) else (hint,)
            if value is None and type(None) in options:
                out[key] = None
                continue
            converted = next((c for o in options if o is not type(None) and (c := _convert(value, o)) is not _NO), _NO)
            if converted is _NO:
                names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
                raise ConfigError(f"{section}.{key}={value!r}: must be {names}")
            value = converted
        out[key] = value
    return out


def _build(data: dict[str, Any]) -> RunConfig:
    model_data = _check_types("model", data.get("model", {}))
    preset = model_data.pop("preset", None)
    if preset is not None:
        model = get_preset(preset).replace(**model_data)
    else:
        model = ModelConfig.from_dict(model_data) if model_data else ModelConfig()
    sections = {}
    for name, cls in SECTIONS.items():
        values = _check_types(name, data.get(name, {}))
        if name == "data" and isinstance(values.get("corpus"), str):
            values["corpus"] = [values["corpus"]]
        sections[name] = cls(**{_python_key(name, k): v for k, v in values.items()})
    parallel_values = _check_types("parallel", data.get("parallel", {}))
    engine_keys = {f.name for f in dataclasses.fields(EngineOptions)}
    engine_options = EngineOptions(**{k: v for k, v in parallel_values.items() if k in engine_keys})
    parallel = Layout.from_dict({k: v for k, v in parallel_values.items() if k not in engine_keys})
    config = RunConfig(model=model, parallel=parallel, model_preset=preset, engine_options=engine_options,
                       **sections)
    config.validate()
    return config


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))
