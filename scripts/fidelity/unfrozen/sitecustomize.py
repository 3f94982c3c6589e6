"""Imported by every Python process started with this folder on PYTHONPATH (spawned run workers too): makes
PartialViT.freeze a no-op, so the CLIP ViT trains with the method. Diagnosis only (scripts/fidelity)."""
from zss_bench.clip.partial import PartialViT


def _no_freeze(self):
    self._frozen = False
    for p in self.parameters():
        p.requires_grad_(True)
    return self


PartialViT.freeze = _no_freeze
