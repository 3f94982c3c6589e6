"""What every picture shares: Agg figures, atomic PNG output, run labels, the protocol of a record
and the class colours, so the same class has the same colour in every picture of a protocol."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from zss_bench.plots import PlotInputError
from zss_bench.records.store import LoadedRun, atomic_write_bytes

SEEN_COLOUR, UNSEEN_COLOUR = "#4c72b0", "#dd8452"
IGNORE_RGB = np.array([0, 0, 0], np.uint8)


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot state, no display needed), laid out without overlaps."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a picture)."""
    return atomic_write_bytes(path, png_bytes(fig))


def run_label(record: dict) -> str:
    """``method [label] seed S``: how a run is named in legends and titles."""
    method = record["method"]
    seed = (record.get("provenance") or {}).get("seed")
    label = method.get("label") or str(method.get("config_hash", "default"))[:8]
    return f"{method['name']} [{label}]" + (f" seed {seed}" if seed is not None else "")


def wrap(text: str, width: int = 80) -> str:
    """Break long titles and legend entries (derived config labels can run to 150 characters)."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def file_stem(run: LoadedRun) -> str:
    """``<method>-<run-id>``: unique among the records of one results folder, safe as a file name."""
    return f"{run.path.parent.name}-{run.path.name}"


def record_protocol(run: LoadedRun):
    """The installed protocol a record was scored under (its classes, split and colours)."""
    from zss_bench.protocol import ProtocolError, load_protocol, protocol_ref

    name = protocol_ref(run.record["protocol"])
    try:
        return load_protocol(name)
    except (ProtocolError, LookupError, OSError) as exc:
        raise PlotInputError(f"{run.path / 'record.json'}: its protocol '{name}' cannot be loaded here ({exc})") from None


def class_colours(protocol) -> np.ndarray:
    """(K, 3) uint8 colours: the protocol's own palette when it defines one, else the PASCAL VOC colour
    map shifted by one (class k gets VOC index k + 1: VOC's familiar colours on voc-15-5, black kept
    for ignore), which is fixed and deterministic for any K <= 255."""
    own = getattr(protocol, "palette", None)
    if own is not None and len(own) >= protocol.num_classes:
        return np.asarray(own, np.uint8)[: protocol.num_classes, :3]
    from zss_bench.data.synth import voc_palette

    return np.asarray(voc_palette(256), np.uint8).reshape(256, 3)[1: protocol.num_classes + 1]
