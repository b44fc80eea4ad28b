"""One matrix product per group of rows, as a single operation whose output shape does not depend on how the
rows split into groups: what lets the mixture of experts compile into one graph (`dispatch_grouped` in
`model.py`).

`grouped_mm(x, w, ends)`: x (M, K) holds the groups' rows one after another, group g's in
x[ends[g - 1]:ends[g]]; w (G, K, N) holds a matrix per group; the result (M, N) is each row times its group's
matrix. It is a `torch.library` custom operation with its own backward, so `torch.compile` treats it as one
opaque kernel of known output shape, whatever the dtype. Inside it runs PyTorch's grouped GEMM
(`torch._grouped_mm`, one kernel for every group) where that has a kernel for the dtype and device (float32
and bfloat16 on the CPU, bfloat16 on CUDA), and one product per group elsewhere (float64, which the tests use;
that path reads the group sizes on the host, so it cannot be captured in a CUDA graph).
"""

from __future__ import annotations

import torch


def _has_kernel(x: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):  # PyTorch before 2.8
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16)
    return x.device.type == "cuda" and x.dtype == torch.bfloat16


def _bounds(ends: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of each group's rows."""
    stops = ends.tolist()
    return list(zip([0] + stops[:-1], stops))


@torch.library.custom_op("blueberry::grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(M, N): x[ends[g - 1]:ends[g]] @ w[g] for every group g. x (M, K), w (G, K, N), ends (G,) int32
    cumulative row counts with ends[-1] = M."""
    if _has_kernel(x):
        # Contiguous as the fake says: the CUDA kernel may pad its output's rows to 16-byte alignment.
        return torch._grouped_mm(x.contiguous(), w, offs=ends).contiguous()
    return torch.cat([x[start:end] @ w[g] for g, (start, end) in enumerate(_bounds(ends))])


@grouped_mm.register_fake
def _(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("blueberry::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(G, K, N): x[rows of g].T @ grad[rows of g] for every group g (zero for a group without rows), the
    gradient of `grouped_mm` with respect to w."""
    if _has_kernel(x):
        return torch._grouped_mm(x.t(), grad, offs=ends).contiguous()
    return torch.stack([x[start:end].T @ grad[start:end] for start, end in _bounds(ends)])


@grouped_mm_weight_grad.register_fake
def _(x: torch.Tensor, grad: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return x.new_empty(ends.shape[0], x.shape[1], grad.shape[1])


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's signature)
    x, w, ends = inputs
    ctx.save_for_backward(x, w, ends)


def _backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # noqa: ANN001
    x, w, ends = ctx.saved_tensors
    grad = grad.contiguous()  # the CPU kernel refuses expanded (stride 0) gradients, such as a sum's
    dx = grouped_mm(grad, w.transpose(1, 2), ends) if ctx.needs_input_grad[0] else None
    dw = grouped_mm_weight_grad(x, grad, ends) if ctx.needs_input_grad[1] else None
    return dx, dw, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)
