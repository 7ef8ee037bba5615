"""``python -m privbench`` (and ``torchrun --nproc_per_node=N -m privbench run ...``)."""

from privbench.cli import main

main()
