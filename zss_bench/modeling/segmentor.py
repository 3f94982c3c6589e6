"""Plumbing every zss-bench meta-architecture shares, so methods only write their own math.

Handles detectron2's batched-input format, normalisation, padding (targets padded with the
ignore label), upsampling scores to the input size, whole-image or sliding-window inference
and ``sem_seg_postprocess`` back to each image's original size. The evaluation class list is
handed over by the runner *after* training through :meth:`set_eval_classes`, so nothing
about unseen classes is present while a method trains.
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn


class ZSSSegmentor(nn.Module):
    """Base class. Subclasses implement ``train_losses(images, targets) -> dict`` and
    ``eval_scores(images) -> (B, K, h, w)`` over the classes given to ``set_eval_classes``."""

    def __init__(self, cfg, size_divisibility: int):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        self.size_divisibility = max(1, size_divisibility)
        self.eval_mode = cfg.ZSS.EVAL.MODE
        self.slide_crop, self.slide_stride = cfg.ZSS.EVAL.SLIDE_CROP, cfg.ZSS.EVAL.SLIDE_STRIDE
        self.eval_class_names: list[str] | None = None

    @property
    def device(self):
        return self.pixel_mean.device

    # --- the runner's interface ------------------------------------------------------------
    def set_eval_classes(self, class_names: list[str], seen_ids: list[int]) -> None:
        """Called once training is over: the full class list (seen + unseen) to score."""
        self.eval_class_names = list(class_names)
        self.eval_seen_ids = list(seen_ids)

    # --- to implement ----------------------------------------------------------------------
    def train_losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict:
        raise NotImplementedError

    def eval_scores(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- detectron2 entry point ------------------------------------------------------------
    def forward(self, batched_inputs):
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.training:
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
            return self.train_losses(images.tensor, targets.long())
        if self.eval_class_names is None:
            raise RuntimeError("set_eval_classes() must be called before inference")
        scores = self._infer(images.tensor)
        results = []
        for score, image_size, inp in zip(scores, images.image_sizes, batched_inputs):
            height, width = inp.get("height", image_size[0]), inp.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(score, image_size, height, width)})
        return results

    def _infer(self, images: torch.Tensor) -> torch.Tensor:
        if self.eval_mode == "whole":
            return self._upsampled(images)
        if self.eval_mode == "slide":
            return self._slide(images)
        raise ValueError(f"unknown ZSS.EVAL.MODE '{self.eval_mode}' (whole | slide)")

    def _upsampled(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.eval_scores(images)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _slide(self, images: torch.Tensor) -> torch.Tensor:
        """Average scores of overlapping crops (mmseg-style 'slide' test mode)."""
        b, _, h, w = images.shape
        crop, stride = self.slide_crop, self.slide_stride
        ys = list(range(0, max(h - crop, 0) + 1, stride))
        xs = list(range(0, max(w - crop, 0) + 1, stride))
        if ys[-1] + crop < h:
            ys.append(h - crop)
        if xs[-1] + crop < w:
            xs.append(w - crop)
        total, count = None, torch.zeros((1, 1, h, w), device=images.device)
        for y in ys:
            for x in xs:
                y0, x0 = max(y, 0), max(x, 0)
                patch = images[:, :, y0:y0 + crop, x0:x0 + crop]
                s = self._upsampled(patch)
                if total is None:
                    total = torch.zeros((b, s.shape[1], h, w), device=images.device)
                total[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += s
                count[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += 1
        return total / count
