"""drpose_kernels: the Triton kernels of drpose, pure functions of tensors.

This package imports only torch and triton, never ``drpose``, so it can be copied or used on
its own. Each module holds one op's forward and backward kernels and their launchers.
"""
