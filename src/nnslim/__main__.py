"""`python -m nnslim ...` (the `nnslim` command); `torchrun --nproc_per_node N -m nnslim compress ...` trains with DDP."""
import sys

from .cli import main

sys.exit(main())
