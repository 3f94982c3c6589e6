"""Score a folder of prediction PNGs against a folder of native annotation PNGs.

Predictions hold contiguous ids (255 = no prediction); ground truth holds the dataset's own
native ids and is mapped through the protocol, so users can point ``--gt-dir`` straight at
``SegmentationClassAug`` without converting anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zss_bench.data.masks import LabelFileError, read_label_png, to_contiguous
from zss_bench.data.parallel import bounded_map
from zss_bench.metrics import ConfusionMatrix
from zss_bench.protocol import Protocol
from zss_bench.records.fingerprint import fingerprint_block, gt_digest

_SHOW_STEMS = 5


class EvaluationInputError(ValueError):
    """The prediction or ground-truth folders cannot be scored as given."""


@dataclass
class DirectoryEvaluation:
    protocol: Protocol
    cm: ConfusionMatrix
    pred_dir: Path
    gt_dir: Path
    image_ids: list[str]
    missing: list[str] = field(default_factory=list)  # GT stems scored as all-wrong (no prediction)
    extra: list[str] = field(default_factory=list)  # prediction stems with no GT file at all (not scored)
    unlisted: list[str] = field(default_factory=list)  # prediction stems with GT, left out by --image-list
    test_set: dict | None = None  # fingerprint of the scored ground truth (zss_bench.records.fingerprint)


def _pngs(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationInputError(f"{what} folder {folder} does not exist or is not a directory")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()}
    if not files:
        raise EvaluationInputError(f"{what} folder {folder} contains no .png files")
    return files


def _restrict(gts: dict[str, Path], image_list: Path, gt_dir: Path) -> dict[str, Path]:
    try:
        listed = [line.split()[0] for line in image_list.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise EvaluationInputError(f"{image_list}: cannot read the image list ({exc.strerror})") from None
    absent = [s for s in listed if s not in gts]
    if absent:
        raise EvaluationInputError(f"{image_list}: {len(absent)} listed image(s) have no ground truth in {gt_dir}: "
                                   f"{_stems(absent)}")
    if not listed:
        raise EvaluationInputError(f"{image_list}: the image list is empty")
    return {s: gts[s] for s in listed}


def _stems(stems: list[str]) -> str:
    shown = ", ".join(stems[:_SHOW_STEMS])
    return shown + (f", ... ({len(stems)} in all)" if len(stems) > _SHOW_STEMS else "")


PRED_IDS = ("contiguous", "native")


def evaluate_directories(
    protocol: Protocol,
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    allow_missing: bool = False,
    image_list: str | Path | None = None,
    progress: bool = True,
    workers: int = 4,
    pred_ids: str = "contiguous",
) -> DirectoryEvaluation:
    """Accumulate one confusion matrix over every ground-truth image in ``gt_dir``.

    Images are matched by file stem. A ground-truth image without a prediction is an error
    unless ``allow_missing``, in which case it is scored with no prediction at all (every
    labelled pixel a miss). ``image_list`` (a split file such as VOC's ``val.txt``) restricts
    scoring to the listed stems, so ``--gt-dir`` can be a folder holding several splits.
    Errors name the offending file. The result carries the scored ground truth's fingerprint
    (``test_set``), so records of different test sets are never compared as if they were one.

    ``pred_ids``: ``"contiguous"`` (the protocol's class ids, 255 = no prediction) or ``"native"`` (the
    dataset's own ids, as mmseg's ``format_only`` writes them: VOC with ``reduce_zero_label`` gives ids + 1,
    COCO-Stuff its 182-id space), mapped through the protocol's native-id table like the ground truth; a native
    id the protocol ignores (VOC's background) counts as no prediction.
    """
    if pred_ids not in PRED_IDS:
        raise EvaluationInputError(f"pred_ids {pred_ids!r}: expected one of {', '.join(PRED_IDS)}")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    all_gts = gts = _pngs(gt_dir, "ground-truth")
    if image_list is not None:
        gts = _restrict(gts, Path(image_list), gt_dir)
    preds = _pngs(pred_dir, "prediction")
    stems = sorted(gts)
    missing = [s for s in stems if s not in preds]
    extra = sorted(s for s in preds if s not in all_gts)
    unlisted = sorted(s for s in preds if s in all_gts and s not in gts)
    if missing and not allow_missing:
        raise EvaluationInputError(
            f"{len(missing)} ground-truth image(s) in {gt_dir} have no prediction in {pred_dir}: "
            f"{_stems(missing)} ("
            + ("if the ground-truth folder holds several splits, pass --image-list FILE with the split you "
               "predicted (e.g. VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt); " if image_list is None else "")
            + "--allow-missing scores images without a prediction as all-wrong)"
        )
    lut = protocol.native_lut()
    cm = ConfusionMatrix(protocol.num_classes, ignore_index=protocol.ignore_label, track_images=True)

    digests: dict[str, str] = {}

    def load(stem: str) -> tuple[str, np.ndarray, np.ndarray]:
        gt_path = gts[stem]
        gt = to_contiguous(read_label_png(gt_path), lut, gt_path, what="ground-truth")
        digests[stem] = gt_digest(gt)  # hashed in the reading threads: the fingerprint costs no extra pass
        if stem in preds:
            pred = read_label_png(preds[stem])
            if pred_ids == "native":
                pred = to_contiguous(pred, lut, preds[stem], what="prediction")
            if pred.shape != gt.shape:
                raise EvaluationInputError(
                    f"{preds[stem]}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from "
                    f"ground truth {gt_path} size {gt.shape[1]}x{gt.shape[0]}"
                )
        else:
            pred = np.full(gt.shape, protocol.ignore_label, dtype=gt.dtype)
        return stem, pred, gt

    loaded = bounded_map(load, stems, workers=workers)
    for stem, pred, gt in tqdm(loaded, total=len(stems), desc="evaluate", unit="img", disable=not progress):
        try:
            cm.update(pred, gt, image_ids=[stem])
        except ValueError as exc:
            where = preds.get(stem, gts[stem])
            hint = ""
            if str(exc).startswith("pred"):
                hint = (f" (predictions hold contiguous ids 0..{protocol.num_classes - 1} in the protocol's class "
                        f"order, {protocol.ignore_label} = no prediction; predictions in the dataset's native ids "
                        "need --pred-ids native)")
            raise EvaluationInputError(f"{where}: {exc}{hint}") from None
    return DirectoryEvaluation(protocol, cm, pred_dir, gt_dir, stems, missing, extra, unlisted,
                               fingerprint_block(digests))


__all__ = ["DirectoryEvaluation", "EvaluationInputError", "LabelFileError", "evaluate_directories"]
