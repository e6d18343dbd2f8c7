"""Counting host reads of tensor values, the synchronisations that stall a GPU."""

import torch


class HostReads(torch.overrides.TorchFunctionMode):
    """Records every read of a tensor's value on the host: on a GPU each one waits for the queued
    kernels, and the GPU idles while Python then launches the next ones."""

    READS = frozenset(
        {
            torch.Tensor.__bool__,
            torch.Tensor.item,
            torch.Tensor.tolist,
            torch.Tensor.__int__,
            torch.Tensor.__float__,
            torch.Tensor.__index__,
            torch.Tensor.nonzero,
            torch.nonzero,
            torch.Tensor.cpu,
            torch.Tensor.numpy,
        }
    )

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))
