"""Device, collectives, attention kernels and launch environment: the torch-facing layer.

Import from the submodules: ``backends.device`` (Backend, get_backend),
``backends.launch`` (detect_launch, init_distributed, destroy_distributed),
``backends.attention`` (attend, available_kernels).  This package file stays
empty of imports because ``alphaexa.errors`` imports ``backends.errors`` on the
CLI's torch-free path.
"""
