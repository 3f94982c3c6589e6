"""The global learning module: CLIP's CLS embedding as a query over the body's dense features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_pool(cls: torch.Tensor, dense: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cls (B, D), dense (B, D, h, w) -> (S_hat (B, D), W (B, h*w)).

    W = softmax over positions of cos(S, R_i) / temperature; S_hat = sum_i W_i R_i (the raw features)."""
    r = dense.flatten(2)  # (B, D, N)
    sim = torch.einsum("bd,bdn->bn", F.normalize(cls.to(r.dtype), dim=-1), F.normalize(r, dim=1))
    weight = (sim / temperature).softmax(-1)
    return torch.einsum("bn,bdn->bd", weight, r), weight


def gather_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A multi-process run's whole batch of ``x`` (B, ...) -> (the global batch (world x B, ...) in rank
    order, identical on every rank; where this rank's rows start). Rank r holds global images
    r*B..(r+1)*B-1 (``engine.data``), so the order is that of one process given the global batch.
    Detached (no gradient flows to other ranks); one process gets ``(x, 0)`` back unchanged."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]


class ClsMemoryBank(nn.Module):
    """FIFO of unit-norm CLS embeddings from earlier batches: InfoNCE negatives beyond the batch.
    Persistent buffers (a few hundred embeddings), so a resumed run continues with the same bank.
    In a multi-process run ``push`` is given the global batch (``gather_batch``), so every rank
    enqueues every rank's entries in the same order and the banks stay identical (the bank of one
    process given the global batch).

    No host read per step: the write position advances on the device, and the fill level (which decides
    the negatives' number, a shape) is also kept on the host by ``push``. That host copy is trusted only while
    the ``filled`` buffer is the same tensor at the same version; a checkpoint load or any other write to it
    makes the next use read it once from the buffer (``filled`` stays the truth that checkpoints hold)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 0:
            raise ValueError(f"MODEL.CLIP_ZSS.GLM.BANK_SIZE must be >= 0, got {size}")
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self._remember_filled(0)

    def _remember_filled(self, value: int) -> None:
        self._filled_host = (self.filled, self.filled._version, value)

    def _filled(self) -> int:
        """int(self.filled), from the host copy while it is current (no device read)."""
        tensor, version, value = self._filled_host
        if tensor is not self.filled or version != self.filled._version:
            value = int(self.filled)  # the buffer changed behind push's back (loaded, overwritten): read it once
            self._remember_filled(value)
        return value

    def _apply(self, fn, recurse=True):
        tensor, version, value = self._filled_host
        current = tensor is self.filled and version == self.filled._version
        out = super()._apply(fn, recurse)
        if current:  # moved or cast (.to, .cuda): the same count in a new tensor
            self._remember_filled(value)
        return out

    def negatives(self) -> torch.Tensor:
        return self.bank[: self._filled()]

    @torch.no_grad()
    def push(self, cls: torch.Tensor) -> None:
        size = self.bank.shape[0]
        if size == 0:
            return
        cls = F.normalize(cls.detach().float(), dim=-1)[-size:]
        n = cls.shape[0]
        idx = (self.pointer + torch.arange(n, device=self.bank.device)) % size
        self.bank[idx] = cls.to(self.bank.dtype)
        self.pointer.copy_((self.pointer + n) % size)
        filled = min(size, self._filled() + n)
        self.filled.fill_(filled)
        self._remember_filled(filled)


def glm_infonce(pooled: torch.Tensor, cls: torch.Tensor, negatives: torch.Tensor, temperature: float,
                offset: int = 0) -> torch.Tensor:
    """InfoNCE of each image's pooled features against its own CLS (positive), the batch's other CLS and
    the memory bank's (negatives). pooled (B, D); cls (B', D), the batch's CLS, where image i's own is row
    ``offset + i`` (a multi-process run passes the global batch's, ``gather_batch``, so the other ranks'
    images are negatives as in one process); negatives (M, D), unit norm."""
    p = F.normalize(pooled, dim=-1)
    keys = torch.cat([F.normalize(cls.detach().to(p.dtype), dim=-1), negatives.to(p.dtype)], dim=0)
    logits = p @ keys.t() / temperature
    return F.cross_entropy(logits, offset + torch.arange(p.shape[0], device=p.device))
