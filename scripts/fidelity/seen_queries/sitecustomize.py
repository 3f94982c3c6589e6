"""Diagnosis only (protocols/synth/FIDELITY.md, E9): ZegCLIP-style scored with the *seen* class queries alone.

ZegCLIP's decoder lets the class queries attend to each other; training sees the 15 seen queries, evaluation
all 20. Scoring the same checkpoint with only the seen queries (unseen classes get probability 0) tells whether
adding the unseen queries is what breaks the seen predictions. With ZSS_DIAG_UNFROZEN=1 the ViT is not frozen
either (as unfrozen/), so the unfrozen diagnosis checkpoint loads with its trained ViT weights.
Use: PYTHONPATH=scripts/fidelity/seen_queries zss-bench run ... --eval-only MODEL.WEIGHTS CKPT"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unfrozen"))
if os.environ.get("ZSS_DIAG_UNFROZEN") == "1":
    import zss_diag_unfreeze

    zss_diag_unfreeze.apply()

from zss_bench.methods.zegclip.meta_arch import ZegCLIPSeg  # noqa: E402


def _seen_query_scores(self, images):
    names, seen = self.eval_class_names, self.eval_seen_ids
    self.text.set_classes([names[i] for i in seen])
    try:
        probs = self._predict(images)[-1].sigmoid()
    finally:
        self.text.set_classes(names)
    out = probs.new_zeros(probs.shape[0], len(names), *probs.shape[2:])
    out[:, seen] = probs
    return out


ZegCLIPSeg.eval_scores = _seen_query_scores
