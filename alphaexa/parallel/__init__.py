"""Parallelism applied from outside the model: one DeviceMesh, FSDP2/HSDP, tensor + sequence,
pipeline and expert parallel, recompute, compile, global-norm clipping (docs/parallelism.md).

Typical use (every rank):

    layout = resolve_layout(layout, world, model_cfg, global_batch, seq_len)   # no process group yet
    check_layout(layout, model_cfg, backend.device_type)
    init_distributed()
    dims = build_mesh(layout, backend)
    with torch.device("meta"):
        model = Transformer(model_cfg)
    pmodel = parallelize(model, dims, compute_dtype=torch.bfloat16)
    materialise(pmodel, seed=0)                 # this rank's shards, as one process would initialise them
    step = make_train_step(pmodel, layout.n_microbatches(global_batch))
    optimizer = torch.optim.AdamW(pmodel.parameters(), ...)
    rows = local_rows(global_batch, n_microbatches, dims.dp_rank, layout.dp)
    result = step(inputs[rows], targets[rows])
    norm = clip_grad_norm_(pmodel.parameters(), max_norm, dims)
    optimizer.step(); optimizer.zero_grad()
"""
from .clip import clip_divisor, clip_grad_norm_, global_grad_norm
from .materialise import materialise
from .mesh import ParallelDims, build_mesh
from .parallelize import ParallelModel, check_layout, parallelize
from .train_step import IGNORE_INDEX, StepResult, TrainStep, local_rows, make_train_step, summed_cross_entropy

__all__ = ["IGNORE_INDEX", "ParallelDims", "ParallelModel", "StepResult", "TrainStep", "build_mesh",
           "check_layout", "clip_divisor", "clip_grad_norm_", "global_grad_norm", "local_rows", "make_train_step", "materialise",
           "parallelize", "summed_cross_entropy"]
