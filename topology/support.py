"""What the trainer can run: the implementation rules the planner and ``check_layout`` share (torch-free).

``topology.layout`` checks what any implementation needs (divisibility, world size,
schedules).  This module adds what *this* trainer's implementation supports, so
``alphaexa.parallel.check_layout`` and the planner's search read one list: a plan
only proposes layouts the trainer accepts, and a rule changed here changes both.

Engines (``parallel.engine``): ``native`` (FSDP2 with TP, PP, EP) and ``deepspeed``
(ZeRO data parallelism only).  Offload (``parallel.offload``): ``cpu`` moves
parameters, gradients and optimizer state to host memory (FSDP2's CPU offload
policy on native, ZeRO-Offload on DeepSpeed), ``nvme`` to files under
``parallel.nvme_path`` (ZeRO-Infinity, DeepSpeed only); both need ``sharding=zero3``.
"""
from __future__ import annotations

from .layout import Layout
from .modelcfg import ConfigError, ModelConfig

ENGINES = ("native", "deepspeed")
# What `alphaexa train` (and so the site launchers) runs.  The planner offloads on its own accord
# only with these, so a fresh plan is one the launchers can start.
TRAINER_ENGINES = ("native", "deepspeed")
OFFLOADS = ("none", "cpu", "nvme")
SUPPORTED_CP = (1,)  # context parallelism is not implemented in the trainer yet


def compiled_by_default(device_type: str, tp: int, recompute: str) -> bool:
    """Whether ``train.compile=auto`` compiles the model: on CUDA, except with tensor parallelism
    (wrong gradients on CPU, unverified on GPUs) and selective recompute (its checkpoint policy fails
    under compile: docs/parallelism.md).  The trainer resolves ``auto`` with this, and the planner
    costs a compiled step (fused elementwise kernels) exactly where it holds."""
    return device_type == "cuda" and tp == 1 and recompute != "selective"


def pipeline_supported(model: ModelConfig) -> bool:
    """A tied embedding and LM head cannot sit on two pipeline stages."""
    return not model.tie_embeddings


def tp_supported(model: ModelConfig, tp: int) -> bool:
    """Vocabulary-parallel embedding and loss need tp to divide the vocabulary."""
    return model.vocab_size % tp == 0


def engines_for(layout: Layout) -> tuple[str, ...]:
    """Engines that can run ``layout``'s parallelism (DeepSpeed: plain or ZeRO data parallelism)."""
    deepspeed_ok = layout.tp == layout.pp == layout.cp == layout.ep == 1 and (
        layout.dp_replicate == 1 or layout.sharding == "none")
    return ENGINES if deepspeed_ok else ("native",)


def unsupported(layout: Layout, model: ModelConfig, device_type: str = "cuda", *, compile: bool = False,
                engine: str = "native", offload: str = "none") -> str | None:
    """Why the trainer cannot run this (resolved, validated) layout, in one line; None when it can."""
    if engine not in ENGINES:
        return f"engine={engine!r}: must be one of {', '.join(ENGINES)}"
    if offload not in OFFLOADS:
        return f"offload={offload!r}: must be one of {', '.join(OFFLOADS)}"
    if layout.cp not in SUPPORTED_CP:
        if device_type == "cpu":
            return (f"cp={layout.cp}: context parallelism needs an accelerator (its ring-attention kernels have no "
                    "CPU implementation); use cp=1 on CPU")
        return f"cp={layout.cp}: context parallelism is not implemented in this trainer yet; use cp=1"
    if layout.pp > 1 and not pipeline_supported(model):
        return (f"pp={layout.pp} with tie_embeddings: the embedding (first stage) and the LM head (last stage) "
                "cannot share one weight across pipeline ranks")
    if compile and layout.tp > 1 and device_type == "cpu":
        # Measured (tests, -m exhaustive): tp2 with compiled blocks gives the right loss but a
        # gradient norm 12% off on CPU/gloo with torch 2.13.
        return f"compile with tp={layout.tp} on CPU gives wrong gradients (torch 2.13); turn compile off or use tp=1"
    if layout.tp > 1 and not tp_supported(model, layout.tp):
        return f"tp={layout.tp} does not divide vocab_size={model.vocab_size} (vocabulary-parallel embedding and loss)"
    if engine == "deepspeed" and "deepspeed" not in engines_for(layout):
        return (f"{layout.short()}: the DeepSpeed engine runs data parallelism only (tp, pp, cp, ep = 1; "
                "dp_replicate > 1 only without sharding); use engine=native")
    if offload != "none" and layout.sharding != "zero3":
        return f"offload={offload} needs sharding=zero3 (parameters, gradients and optimizer state leave the device)"
    if offload == "nvme" and engine != "deepspeed":
        return "offload=nvme needs engine=deepspeed (ZeRO-Infinity); the native engine offloads to cpu only"
    return None


def check_supported(layout: Layout, model: ModelConfig, device_type: str = "cuda", *, compile: bool = False,
                    engine: str = "native", offload: str = "none") -> None:
    """ConfigError (one line) when the trainer cannot run the layout."""
    reason = unsupported(layout, model, device_type, compile=compile, engine=engine, offload=offload)
    if reason:
        raise ConfigError(reason)
