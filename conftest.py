"""Root pytest configuration.

Triton kernels run under the interpreter on machines without a CUDA GPU. The variable must be set
before ``triton`` is first imported, which is why it lives here, at the root.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
