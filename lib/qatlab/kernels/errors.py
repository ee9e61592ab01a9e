"""Typed errors of the kernel package."""

from __future__ import annotations


class KernelError(Exception):
    """Base class of every error raised by ``qatlab.kernels``."""


class KernelInputError(KernelError, ValueError):
    """Bad operands (dtype, layout, shape, empty dimension), raised before any launch."""


class UnknownKernelError(KernelError, KeyError):
    """A kernel or backend name the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class CupyUnavailableError(KernelError, ImportError):
    """The ``cuda`` backend was asked for but CuPy (or a CUDA device) is missing."""

    INSTALL_HINT = "install the 'gpu' extra: pip install -e '.[gpu]' (CuPy, cupy-cuda12x; use cupy-cuda13x on a CUDA 13 driver stack)"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the 'cuda' kernel backend needs CuPy and a CUDA GPU: {reason}; {self.INSTALL_HINT}")
