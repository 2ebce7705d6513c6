"""What a CUDA error means for a checkpoint actor: out of memory (score smaller), a lost context (the process must
go), or neither.

torch raises `torch.OutOfMemoryError` only when its own caching allocator fails. Memory also runs out inside
libraries and launches: cuBLAS cannot create a handle or workspace (`CUBLAS_STATUS_ALLOC_FAILED`), a kernel launch
finds no memory (`CUDA error: out of memory`); torch reports those as a plain RuntimeError (`torch.AcceleratorError`
since torch 2.8) carrying the library's message. They are as retryable as the allocator's own.

A sticky error (an illegal memory access, a device-side assert, a kernel that faulted) corrupts the process's CUDA
context: every later CUDA call in that process fails the same way, whatever it is given, so only a new process can
go on. The CUDA runtime's documentation says so of each code below ("the process must be terminated and relaunched").
"""

from __future__ import annotations

import torch

# cudaError_t values, as torch.AcceleratorError.error_code gives them (where it does)
CUDA_ERROR_MEMORY_ALLOCATION = 2
CONTEXT_LOST_CODES = frozenset({
    214,  # cudaErrorECCUncorrectable
    700,  # cudaErrorIllegalAddress
    702,  # cudaErrorLaunchTimeout
    710,  # cudaErrorAssert
    714,  # cudaErrorHardwareStackError
    715,  # cudaErrorIllegalInstruction
    716,  # cudaErrorMisalignedAddress
    717,  # cudaErrorInvalidAddressSpace
    718,  # cudaErrorInvalidPc
    719,  # cudaErrorLaunchFailure
})
# The same, by the words torch's message carries (cudaGetErrorString, or the library's status name)
OUT_OF_MEMORY_MESSAGES = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUBLASLT_STATUS_ALLOC_FAILED",
                          "CUDNN_STATUS_ALLOC_FAILED", "CUSOLVER_STATUS_ALLOC_FAILED", "CUSPARSE_STATUS_ALLOC_FAILED")
CONTEXT_LOST_MESSAGES = ("uncorrectable ECC error encountered", "an illegal memory access was encountered",
                         "the launch timed out and was terminated", "device-side assert triggered",
                         "hardware stack error", "an illegal instruction was encountered", "misaligned address",
                         "operation not supported on global/shared address space", "invalid program counter",
                         "unspecified launch failure")


def is_out_of_memory(error: BaseException) -> bool:
    """True for any device memory shortage, the allocator's or a library's: a smaller batch may fit."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return _code(error) == CUDA_ERROR_MEMORY_ALLOCATION or _says(error, OUT_OF_MEMORY_MESSAGES)


def is_context_lost(error: BaseException) -> bool:
    """True for a sticky CUDA error: this process's CUDA context is unusable from now on."""
    return _code(error) in CONTEXT_LOST_CODES or _says(error, CONTEXT_LOST_MESSAGES)


def _code(error: BaseException) -> int | None:
    return getattr(error, "error_code", None) if isinstance(error, RuntimeError) else None


def _says(error: BaseException, messages: tuple[str, ...]) -> bool:
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return any(message in text for message in messages)
