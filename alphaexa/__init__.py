"""AlphaExa: hybrid dense + MoE transformers, trained with 4-D parallelism on CPU, CUDA and XPU."""
__version__ = "0.1.0"
