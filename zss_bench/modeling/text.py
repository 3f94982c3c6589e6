"""Text classifiers: dense joint-space features -> per-class cosine scores against CLIP text embeddings.

Class names arrive in two phases. Phase 1 (training): only the seen names the training dataset's
metadata exposes. Phase 2 (``set_classes`` after training): every class of the protocol. Every
name goes through ``class_text_embeddings``, so the run's leakage guard sees what was encoded when.

Kinds (a plugin declares one as ``MethodPlugin.text_classifier``):

- ``fixed`` (:class:`TextClassifier`): frozen prompt-ensemble embeddings;
- ``learnable-no-object`` (:class:`NoObjectTextClassifier`): the same plus one learnable
  "no object" embedding scored as an extra last class (mask-classification methods);
- ``learnable-prompts`` (:class:`PromptLearnerTextClassifier`): CoOp-style learnable context
  vectors in place of the template's words, run through the frozen text tower at every forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.clip import LoadedClip, class_text_embeddings

from zss_bench.plugins import TEXT_CLASSIFIERS as KINDS  # noqa: F401  (what plugins may declare)


class TextClassifier(nn.Module):
    """Cosine-similarity classifier against frozen CLIP text embeddings of a class list."""

    def __init__(self, clip: LoadedClip, templates: tuple[str, ...], class_names: list[str]):
        super().__init__()
        self._clip = clip  # not a submodule: the text tower is only used to (re)build embeddings
        self.templates = tuple(templates)
        self.register_buffer("embeddings", torch.zeros(0), persistent=False)
        self.set_classes(class_names)

    def set_classes(self, class_names: list[str]) -> None:
        emb = class_text_embeddings(self._clip, list(class_names), self.templates)
        self.embeddings = F.normalize(emb.float(), dim=-1).to(self.embeddings.device)
        self.class_names = list(class_names)

    def classes_embeddings(self) -> torch.Tensor:
        """(C, D) unit-norm class embeddings the scores are computed against."""
        return self.embeddings

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) or (B, Q, D) -> cosine similarities (B, C, h, w) or (B, Q, C)."""
        emb = self.classes_embeddings()
        if z.dim() == 3:
            return F.normalize(z, dim=-1) @ emb.t()
        return torch.einsum("bdhw,cd->bchw", F.normalize(z, dim=1), emb)


class NoObjectTextClassifier(TextClassifier):
    """:class:`TextClassifier` plus a learnable "no object" embedding, scored as the last class."""

    def __init__(self, clip: LoadedClip, templates: tuple[str, ...], class_names: list[str]):
        super().__init__(clip, templates, class_names)
        self.no_object = nn.Parameter(torch.randn(self.embeddings.shape[-1]) * 0.02)

    def classes_embeddings(self) -> torch.Tensor:
        return torch.cat([self.embeddings, F.normalize(self.no_object, dim=-1)[None]], dim=0)


class PromptLearnerTextClassifier(TextClassifier):
    """CoOp-style prompts: ``"X X X X {name}."`` with the n context words' token embeddings replaced by
    learnable vectors (initialised from ``init``'s, so before training the embeddings equal the text
    tower's own for ``"{init} {name}."``). The frozen text tower stays outside the module (never in
    checkpoints); gradients reach only the context vectors. Names are audited like fixed prompts."""

    def __init__(self, clip: LoadedClip, class_names: list[str], n_ctx: int = 4, init: str = "a photo of a"):
        nn.Module.__init__(self)
        model = clip.model
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(model, attr):
                raise ValueError(f"learnable prompts need an open_clip CLIP text tower; {clip.name} has no '{attr}'")
        self._clip, self.n_ctx, self.templates = clip, int(n_ctx), ()
        init_ids = clip.tokenizer([init]).to(model.token_embedding.weight.device)[0]
        words = int((init_ids != 0).sum()) - 2  # minus start/end tokens
        if words != self.n_ctx:
            raise ValueError(f"the context init '{init}' has {words} tokens, expected n_ctx={self.n_ctx}")
        with torch.no_grad():
            ctx = model.token_embedding(init_ids[1:1 + self.n_ctx]).float()
        self.ctx = nn.Parameter(ctx.clone())
        self.register_buffer("tokens", torch.zeros(0, dtype=torch.long), persistent=False)
        self.set_classes(class_names)

    def set_classes(self, class_names: list[str]) -> None:
        from zss_bench.clip.text_embeddings import text_encoder_audit

        names = list(class_names)
        text_encoder_audit.record(names, source="encoded", model=self._clip.name,
                                  weights_hash=self._clip.weights_hash, n_templates=1)
        prompts = [" ".join(["X"] * self.n_ctx) + f" {name}." for name in names]
        self.tokens = self._clip.tokenizer(prompts).to(self.ctx.device)
        self.class_names = names

    def classes_embeddings(self) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        m = self._clip.model
        x = m.token_embedding(self.tokens)
        ctx = self.ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx:]], dim=1) + m.positional_embedding.to(x.dtype)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        x = text_global_pool(x, self.tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x.float(), dim=-1)
