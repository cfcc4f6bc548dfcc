"""Triton kernels for TopK SAEs and their pure-torch references (imported as workbench.kernels)."""
