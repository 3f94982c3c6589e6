"""Regions of an image, for methods that ask CLIP about parts of it: random crop boxes (Chimera-Seg's
multi-crop distillation), and masked region crops classified by the frozen CLIP (ZegFormer-style
decoupled scoring). Every crop goes through ``torchvision.ops.roi_align`` (one batched call,
sub-pixel exact boxes) instead of a Python loop of slicing and resizing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_boxes(batch: int, grid: tuple[int, int], scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random square-ish crop boxes on the dense grid, one per image, (B, 4) as [y0, x0, y1, x1).

    All boxes of a batch share one size (drawn from ``scale`` x the grid side) so that every
    image keeps the same number of positions and SGD's top-k fraction means the same thing.
    """
    h, w = grid
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"MODEL.CHIMERA.SGD.CROP_SCALE must satisfy 0 < min <= max <= 1, got {scale}")
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    ch, cw = max(1, int(round(s * h))), max(1, int(round(s * w)))
    y0 = torch.randint(0, h - ch + 1, (batch,), generator=generator)
    x0 = torch.randint(0, w - cw + 1, (batch,), generator=generator)
    return torch.stack([y0, x0, y0 + ch, x0 + cw], dim=1)


def box_mask(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 4) grid boxes -> (B, h, w) bool, True inside each image's box."""
    h, w = grid
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    y0, x0, y1, x1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def crop_images(images: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cut each image's grid box out of (B, 3, H, W) images, resized back to (H, W) (bilinear)."""
    from torchvision.ops import roi_align

    b, _, hh, ww = images.shape
    sy, sx = hh / grid[0], ww / grid[1]
    y0, x0, y1, x1 = boxes.to(images.dtype).unbind(1)
    rois = torch.stack([torch.arange(b, dtype=images.dtype), x0 * sx, y0 * sy, x1 * sx, y1 * sy], dim=1)
    return roi_align(images, rois.to(images.device), output_size=(hh, ww), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


def mask_boxes(masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, Q, H, W) soft or binary masks -> (B, Q, 4) pixel boxes [x0, y0, x1, y1) around each mask's
    pixels above ``threshold`` (the whole image for an empty mask)."""
    b, q, h, w = masks.shape
    on = masks > threshold
    rows, cols = on.any(-1), on.any(-2)  # (B, Q, H), (B, Q, W)
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    big = torch.iinfo(torch.long).max

    def span(hit, idx, size):
        lo = torch.where(hit, idx, big).amin(-1)
        hi = torch.where(hit, idx, -1).amax(-1) + 1
        empty = ~hit.any(-1)
        return lo.masked_fill(empty, 0), hi.masked_fill(empty, size)

    y0, y1 = span(rows, ys, h)
    x0, x1 = span(cols, xs, w)
    return torch.stack([x0, y0, x1, y1], dim=-1).to(masks.dtype)


def masked_region_crops(images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int], *,
                        fill: torch.Tensor | float = 0.0, threshold: float = 0.5) -> torch.Tensor:
    """One crop per (image, mask): the mask's bounding box cut out of ``images`` (B, 3, H, W) and resized
    to ``size``, pixels outside the mask replaced by ``fill`` (a per-channel tensor (3,) or a number).
    -> (B * Q, 3, *size), image-major (all of image 0's masks first)."""
    from torchvision.ops import roi_align

    b, q, h, w = masks.shape
    if images.shape[-2:] != (h, w):
        masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
    boxes = mask_boxes(masks, threshold).reshape(b * q, 4)
    batch_idx = torch.arange(b, device=images.device, dtype=images.dtype).repeat_interleave(q)
    rois = torch.cat([batch_idx[:, None], boxes.to(images.dtype)], dim=1)
    crops = roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    mask_rois = torch.cat([torch.arange(b * q, device=images.device, dtype=images.dtype)[:, None], rois[:, 1:]], dim=1)
    crop_masks = roi_align(masks.reshape(b * q, 1, *masks.shape[-2:]).to(images.dtype), mask_rois,
                           output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    keep = (crop_masks > threshold).to(images.dtype)
    return crops * keep + fill * (1 - keep)


@torch.no_grad()
def classify_regions(teacher, text, rgb255: torch.Tensor, masks: torch.Tensor, *, threshold: float = 0.5,
                     chunk: int = 64) -> torch.Tensor:
    """CLIP's zero-shot classification of each masked region: (B, Q, H, W) masks -> (B, Q, C) cosine
    scores of the teacher's CLS embedding of each masked crop against ``text``'s class embeddings.
    Regions are encoded ``chunk`` at a time (one CLIP forward per region is the cost of this scoring)."""
    b, q = masks.shape[:2]
    fill = teacher.mean.reshape(-1) * 255.0  # outside the mask: CLIP's mean colour (zero after normalisation)
    crops = masked_region_crops(rgb255, masks, teacher.image_size, fill=fill, threshold=threshold)
    cls = torch.cat([teacher.encode(crops[i:i + chunk], ("cls",))["cls"] for i in range(0, len(crops), chunk)])
    return text(cls.reshape(b, q, -1))
