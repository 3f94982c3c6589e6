"""Makes PartialViT.freeze a no-op, so the CLIP ViT trains with the method (diagnosis only, scripts/fidelity)."""
from zss_bench.clip.partial import PartialViT


def _no_freeze(self):
    self._frozen = False
    for p in self.parameters():
        p.requires_grad_(True)
    return self


def apply() -> None:
    PartialViT.freeze = _no_freeze
