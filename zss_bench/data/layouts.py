"""Where each dataset keeps its images, annotations and split lists.

One small class per dataset family; each turns a dataset root into per-split lists of
(image, annotation) files plus a list of problems (missing files, unexpected layout), so
``prepare --report-only`` can show everything that is wrong at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zss_bench.registry import Registry

NATIVE, CONTIGUOUS = "native", "contiguous"


class DatasetLayoutError(ValueError):
    """The dataset root does not have the expected folder layout."""


@dataclass(frozen=True)
class ImageEntry:
    id: str
    image: Path
    label: Path
    label_format: str = NATIVE  # "contiguous": ids already in the protocol's 0..K-1 space


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: str = "error"  # "error" stops prepare; "warning" is reported only

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def dataset_root(root: str | Path | None, flag: str = "--root") -> Path:
    """``root`` if given, else ``$DETECTRON2_DATASETS`` (detectron2's convention); ``flag`` is the
    command-line option that gives it (``prepare --root``, ``run --data-root``), for the error."""
    if root is None:
        env = os.environ.get("DETECTRON2_DATASETS")
        if not env:
            raise DatasetLayoutError(f"no dataset root: pass {flag} DIR or set DETECTRON2_DATASETS")
        root = env
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a directory")
    return root.resolve()


def _read_list(path: Path) -> list[str]:
    stems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            token = line.split()[0]  # some lists carry "image label" pairs; the stem is enough
            stems.append(Path(token).stem if ("/" in token or "." in token) else token)
    return stems


def _first_dir(candidates: list[Path], marker: str, what: str) -> Path:
    for c in candidates:
        if (c / marker).is_dir():
            return c
    tried = ", ".join(str(c / marker) for c in candidates)
    raise DatasetLayoutError(f"{what}: none of these folders exist: {tried}")


class Layout:
    """Base class: ``entries(list_name, split)`` -> ([ImageEntry], [Problem])."""

    name = ""
    image_ext = ".jpg"

    def __init__(self, root: str | Path | None):
        self.root = dataset_root(root)

    def entries(self, list_name: str, split: str) -> tuple[list[ImageEntry], list[Problem]]:
        raise NotImplementedError


class VOCLayout(Layout):
    """PASCAL VOC 2012 (+SBD aug): ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClassAug,
    SegmentationClass, ImageSets/Segmentation/{train_aug.txt | train.txt + aug.txt, val.txt}}``.

    Training images prefer ``SegmentationClassAug`` (the SBD-augmented labels); the val split
    prefers the official ``SegmentationClass`` (as mmseg-based repos do); each falls back
    to the other folder when an image has no file in the preferred one.
    """

    name = "voc"
    devkit = ("VOCdevkit/VOC2012", "VOC2012", ".")
    lists_dir = "ImageSets/Segmentation"
    label_dirs = ("SegmentationClassAug", "SegmentationClass")

    def __init__(self, root):
        super().__init__(root)
        self.base = _first_dir([self.root / d for d in self.devkit], "JPEGImages", f"{self.name} layout under {self.root}")

    def _list(self, list_name: str) -> tuple[list[str], list[Problem]]:
        lists = self.base / self.lists_dir
        path = lists / f"{list_name}.txt"
        if path.is_file():
            return _read_list(path), []
        if list_name == "train_aug" and (lists / "train.txt").is_file() and (lists / "aug.txt").is_file():
            val = set(_read_list(lists / "val.txt")) if (lists / "val.txt").is_file() else set()
            stems = sorted((set(_read_list(lists / "train.txt")) | set(_read_list(lists / "aug.txt"))) - val)
            return stems, []
        have = sorted(p.name for p in lists.glob("*.txt")) if lists.is_dir() else []
        expected = f"{list_name}.txt" + (" (or train.txt + aug.txt)" if list_name == "train_aug" else "")
        return [], [Problem(str(path), f"split list missing: expected {expected} in {lists}; found {have or 'nothing'}")]

    def _label_dirs(self, split: str) -> list[Path]:
        dirs = [self.base / d for d in self.label_dirs]
        return dirs if split == "train" else dirs[::-1]

    def entries(self, list_name, split):
        stems, problems = self._list(list_name)
        label_dirs = [d for d in self._label_dirs(split) if d.is_dir()]
        if stems and not label_dirs:
            names = " or ".join(self.label_dirs)
            return [], problems + [Problem(str(self.base), f"no annotation folder ({names})")]
        out = []
        for stem in stems:
            image = self.base / "JPEGImages" / f"{stem}{self.image_ext}"
            label = next((d / f"{stem}.png" for d in label_dirs if (d / f"{stem}.png").is_file()), None)
            if not image.is_file():
                problems.append(Problem(str(image), f"listed in {list_name}.txt but the image is missing"))
            elif label is None:
                problems.append(Problem(str(label_dirs[0] / f"{stem}.png"), f"listed in {list_name}.txt but has no annotation"))
            else:
                out.append(ImageEntry(stem, image, label))
        return out, problems


class SynthLayout(VOCLayout):
    """The generated synthetic world: a VOC-style folder (see ``zss_bench.data.synth``)."""

    name = "synth"
    devkit = (".",)
    label_dirs = ("SegmentationClass",)


class ContextLayout(VOCLayout):
    """PASCAL Context 59: ``VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext,
    ImageSets/SegmentationContext/{train,val}.txt}`` (59-class PNGs, 0 = background)."""

    name = "context"
    devkit = ("VOCdevkit/VOC2010", "VOC2010", ".")
    lists_dir = "ImageSets/SegmentationContext"
    label_dirs = ("SegmentationClassContext",)


class COCOStuffLayout(Layout):
    """COCO-Stuff 164k: ``coco_stuff164k/{images,annotations}/{train2017,val2017}``.

    Annotations are the raw stuffthingmaps PNGs (``<id>.png``, native ids) or mmseg's
    ``<id>_labelTrainIds.png`` (already contiguous 0..170); the split is the folder listing.
    """

    name = "coco-stuff"

    def __init__(self, root):
        super().__init__(root)
        self.base = _first_dir([self.root / "coco_stuff164k", self.root], "annotations", f"coco-stuff layout under {self.root}")

    def entries(self, list_name, split):
        ann_dir, img_dir = self.base / "annotations" / list_name, self.base / "images" / list_name
        problems = []
        for d in (ann_dir, img_dir):
            if not d.is_dir():
                problems.append(Problem(str(d), "folder missing"))
        if problems:
            return [], problems
        out = []
        for label in sorted(ann_dir.glob("*.png")):
            stem, fmt = label.stem, NATIVE
            if stem.endswith("_labelTrainIds"):
                stem, fmt = stem[: -len("_labelTrainIds")], CONTIGUOUS
            image = img_dir / f"{stem}.jpg"
            if not image.is_file():
                problems.append(Problem(str(image), f"annotation {label.name} has no image"))
                continue
            out.append(ImageEntry(stem, image, label, fmt))
        ids = [e.id for e in out]
        if len(ids) != len(set(ids)):
            problems.append(Problem(str(ann_dir), "both raw and _labelTrainIds annotations present; keep one kind"))
        return out, problems


LAYOUTS = Registry("dataset")
for _cls in (VOCLayout, COCOStuffLayout, ContextLayout, SynthLayout):
    LAYOUTS.register(_cls.name, _cls)

DEFAULT_PROTOCOL = {"voc": "voc-15-5", "coco-stuff": "coco-stuff-156-15", "context": "context-59-zs3",
                    "synth": "synth-15-5"}
