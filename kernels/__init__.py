"""Triton kernels for mulo, shipped as ``mulo.kernels`` (never imported as a top-level ``kernels``).

Importing this package does not import Triton; each kernel module does, when a backend asks for it.
"""
