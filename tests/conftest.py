import os
import sys
from pathlib import Path

import torch

# Triton kernels bind to the interpreter or the GPU when they are defined, so choose before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/helpers.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).parent))
