"""Triton kernels, each wrapped as a torch custom op with an explicit fake implementation.

Importing this package needs triton. Under TRITON_INTERPRET=1 (set before import) the kernels also run on CPU
tensors, which is how the CPU-only test suite covers them.
"""
