"""The napari dock widget: run salip on an image layer, show the result, steer a target
with hints, save salip's outputs.

Runs go through :class:`~salip.apps.napari.session.Session` in a napari thread worker, so
the viewer stays responsive; Cancel stops a run at its next stage. A result is one Labels
layer (organ names, colours and confidence in its features, shown in the status bar) and a
Shapes layer of the chosen boxes with their probabilities and closest competitor. Hints are
drawn in two layers the widget adds on the image's grid: rectangles in "salip hints", clicks
in "salip clicks" (negative with the checkbox on). Save runs salip once more with every
target and hint given so far and writes the files ``salip segment`` writes, so what is
saved is what a command line run with those ``--hint`` flags gives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from salip.api.pipeline import OutputRequest, SegmentationResult
from salip.apps.napari.geometry import (
    hints_from_layers,
    label_colormap,
    label_colours,
    layer_kwargs,
    to_layer,
)
from salip.apps.napari.session import (
    RunRequest,
    Session,
    box_shapes,
    labels_layer,
    replace_target,
)
from salip.core.errors import ConfigError, SalipError
from salip.core.hints import Hint
from salip.core.organs import vocabulary
from salip.io import file_stem, read_input

__all__ = ["SegmentWidget"]

logger = logging.getLogger(__name__)

HINT_SHAPES, HINT_POINTS = "salip hints", "salip clicks"
STRATEGIES = ("auto", "volume", "slices")


class _Stages(QObject):
    """Carries stage names from the worker thread to the widget (a queued signal)."""

    stage = Signal(str)


class SegmentWidget(QWidget):
    """The dock widget (see the module docstring).

    Args:
        napari_viewer: the viewer it docks in (napari passes it).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer, self.session = napari_viewer, Session()
        self.worker: Any = None
        self.cancel = threading.Event()
        self.result: SegmentationResult | None = None
        self.last_run: SegmentationResult | None = None
        self.volume: Any = None
        self.hints: dict[str, list[Hint]] = {}
        self.stages = _Stages()
        self.stages.stage.connect(self._on_stage)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()

    # ---- the form ------------------------------------------------------------------
    def _build(self) -> None:
        form = QFormLayout()
        self.image = QComboBox()
        self.targets = QLineEdit("liver, spleen")
        self.targets.setToolTip("Targets by name or free text, comma-separated.")
        names = sorted(vocabulary().organs)
        completer = QCompleter(names, self)
        self.targets.setCompleter(completer)
        self.strategy = QComboBox()
        self.strategy.addItems(STRATEGIES)
        self.sam = QLineEdit("vit_b")
        self.clip = QLineEdit("ViT-L-14")
        self.clip_pretrained = QLineEdit("openai")
        self.device = QComboBox()
        self.device.addItems(("auto", "cpu", "cuda"))
        self.settings = QLineEdit("")
        self.settings.setToolTip(
            "More settings as name=value, comma-separated, by salip.segment's keyword names "
            "(e.g. points_per_side=16, window=liver)."
        )
        for label, field in (
            ("image", self.image),
            ("targets", self.targets),
            ("strategy", self.strategy),
            ("SAM checkpoint", self.sam),
            ("CLIP model", self.clip),
            ("CLIP weights", self.clip_pretrained),
            ("device", self.device),
            ("settings", self.settings),
        ):
            form.addRow(label, field)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel_run)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self._hint_box())
        layout.addWidget(self._save_box())
        layout.addStretch()

    def _hint_box(self) -> QGroupBox:
        box = QGroupBox("hints")
        form = QFormLayout(box)
        self.hint_target = QComboBox()
        self.negative = QCheckBox("negative click (not the target)")
        self.negative.toggled.connect(self._click_sign)
        self.hint_button = QPushButton("Rerun target with hints")
        self.hint_button.clicked.connect(self.rerun_with_hints)
        form.addRow(QLabel("Draw a rectangle in 'salip hints' or click in 'salip clicks'."))
        form.addRow("target", self.hint_target)
        form.addRow(self.negative)
        form.addRow(self.hint_button)
        return box

    def _save_box(self) -> QGroupBox:
        box = QGroupBox("save")
        form = QFormLayout(box)
        self.folder = QLineEdit(str(Path.cwd()))
        self.mask_type = QComboBox()
        self.mask_type.addItems(("nifti", "dicom-seg"))
        self.want_statistics, self.want_viewer = QCheckBox("statistics"), QCheckBox("viewer")
        self.want_statistics.setChecked(True)
        self.want_viewer.setChecked(True)
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save)
        form.addRow("folder", self.folder)
        form.addRow("masks", self.mask_type)
        form.addRow(self.want_statistics)
        form.addRow(self.want_viewer)
        form.addRow(self.save_button)
        return box

    def _refresh_images(self, *_: Any) -> None:
        current = self.image.currentText()
        self.image.clear()
        for layer in self.viewer.layers:
            if layer.__class__.__name__ == "Image" and "salip_source" in layer.metadata:
                self.image.addItem(layer.name)
        if current:
            self.image.setCurrentText(current)

    # ---- running ---------------------------------------------------------------------
    def request(self, targets: list[str] | None = None, **changes: Any) -> RunRequest:
        """The run the form describes (``targets`` and fields of RunRequest replaced)."""
        layer = self.viewer.layers[self.image.currentText()]
        names = targets or [t.strip() for t in self.targets.text().split(",") if t.strip()]
        options = {
            "sam_checkpoint": self.sam.text().strip(),
            "clip_model": self.clip.text().strip(),
            "clip_pretrained": self.clip_pretrained.text().strip() or None,
            "device": self.device.currentText(),
            **parse_settings(self.settings.text()),
        }
        source = Path(layer.metadata["salip_source"])
        request = RunRequest(source, tuple(names), self.strategy.currentText(), options)
        return dataclasses.replace(request, **changes)

    def run(self) -> None:
        """Run the form's targets on the chosen image."""
        if not self.image.currentText():
            self.status.setText("Open a scan first (File > Open, salip's reader).")
            return
        try:
            request = self.request()
        except SalipError as exc:
            self.status.setText(str(exc))
            return
        self.hints = {}
        self._start(request, self._show)

    def rerun_with_hints(self) -> None:
        """Rerun the chosen target with the hints drawn for it; only its labels change."""
        target = self.hint_target.currentText()
        if self.result is None or not target:
            self.status.setText("Run salip first; then draw a hint and rerun a target.")
            return
        try:
            drawn = self._drawn_hints(target)
            request = self.request([target], hints=tuple(drawn))
        except SalipError as exc:
            self.status.setText(str(exc))
            return
        if not drawn:
            self.status.setText(f"Draw a rectangle in '{HINT_SHAPES}' or click in '{HINT_POINTS}'.")
            return
        self.hints[target] = drawn
        self._start(request, self._replace)

    def save(self) -> None:
        """Run every target with every hint given and write salip's outputs."""
        if self.result is None:
            self.status.setText("Run salip first.")
            return
        targets = list(self.result.label_values)
        given = tuple(h for hs in self.hints.values() for h in hs)
        try:
            request = self.request(targets, hints=given)
        except SalipError as exc:
            self.status.setText(str(exc))
            return
        folder, stem = Path(self.folder.text()), file_stem(request.source)
        suffix = ".dcm" if self.mask_type.currentText() == "dicom-seg" else ".nii.gz"
        outputs = OutputRequest(
            output=folder / f"{stem}_salip{suffix}",
            output_type=self.mask_type.currentText(),
            statistics=folder / f"{stem}_salip.statistics.json"
            if self.want_statistics.isChecked()
            else None,  # fmt: skip
            viewer=folder / f"{stem}_salip.html" if self.want_viewer.isChecked() else None,
            report=folder / f"{stem}_salip.report.json",
        )
        self._start(dataclasses.replace(request, outputs=outputs), self._saved)

    def cancel_run(self) -> None:
        """Stop the run at its next stage."""
        self.cancel.set()
        self.status.setText("cancelling...")

    def _start(self, request: RunRequest, done: Any) -> None:
        from napari.qt.threading import create_worker

        self.cancel = threading.Event()
        cancel, session, stages = self.cancel, self.session, self.stages

        def work() -> tuple[SegmentationResult, Any]:
            volume = read_input(request.source)
            result = session.run(request, cancel=cancel, on_stage=stages.stage.emit)
            return result, volume

        self.worker = create_worker(
            work,
            _start_thread=False,
            _connect={
                "returned": lambda out: done(*out),
                "errored": self._failed,
                "finished": self._finished,
            },
        )
        self.run_button.setEnabled(False)
        self.hint_button.setEnabled(False)
        self.save_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until it ends
        self.status.setText(f"running {', '.join(request.targets)}...")
        self.worker.start()

    def _on_stage(self, stage: str) -> None:
        if not self.cancel.is_set():
            self.status.setText(f"running: {stage}")

    def _failed(self, error: Exception) -> None:
        self.status.setText(str(error) if str(error) != "cancelled" else "cancelled")
        logger.info("salip run ended: %s", error)

    def _finished(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.run_button.setEnabled(True)
        self.hint_button.setEnabled(True)
        self.save_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None

    # ---- results ---------------------------------------------------------------------
    def _show(self, result: SegmentationResult, volume: Any, keep_hints: bool = False) -> None:
        self.result, self.volume = result, volume
        data, kwargs = labels_layer(result, volume)
        colours = label_colormap(result.label_values)
        name = f"salip: {self.image.currentText()}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.labels = self.viewer.add_labels(data, name=name, colormap=colours, **kwargs)
        self._show_boxes(result, volume)
        if not (keep_hints and HINT_SHAPES in self.viewer.layers):
            self._hint_layers(volume)
        self.hint_target.clear()
        self.hint_target.addItems(list(result.label_values))
        self.status.setText(_summary(result))

    def _show_boxes(self, result: SegmentationResult, volume: Any) -> None:
        name = "salip boxes"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        rectangles, texts, organs = box_shapes(result, volume, "axial")
        colours = label_colours(result.label_values)
        edges = [colours[result.label_values[o]] for o in organs] or "white"
        self.boxes = self.viewer.add_shapes(
            rectangles or None,
            ndim=2 if volume.is_2d else 3,
            shape_type="rectangle",
            name=name,
            edge_color=edges,
            face_color="transparent",
            edge_width=1,
            features={"text": texts, "organ": organs},
            text={"string": "{text}", "size": 8, "color": "white", "anchor": "upper_left"},
            **layer_kwargs(volume),
        )

    def _hint_layers(self, volume: Any) -> None:
        ndim = 2 if volume.is_2d else 3
        for name in (HINT_SHAPES, HINT_POINTS):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.hint_shapes = self.viewer.add_shapes(
            None, ndim=ndim, name=HINT_SHAPES, shape_type="rectangle", edge_color="yellow",
            face_color="transparent", edge_width=2, **layer_kwargs(volume),
        )  # fmt: skip
        self.hint_points = self.viewer.add_points(
            None, ndim=ndim, name=HINT_POINTS, size=4, face_color="lime",
            features={"positive": np.zeros(0, bool)}, **layer_kwargs(volume),
        )  # fmt: skip
        self.hint_points.feature_defaults["positive"] = True
        self.viewer.layers.selection.active = self.hint_shapes

    def _click_sign(self, negative: bool) -> None:
        if getattr(self, "hint_points", None) is None:
            return
        self.hint_points.feature_defaults["positive"] = not negative
        self.hint_points.current_face_color = "red" if negative else "lime"

    def _drawn_hints(self, target: str) -> list[Hint]:
        rectangles = [np.asarray(d) for d in self.hint_shapes.data]
        positive = np.asarray(self.hint_points.features["positive"], bool)
        points = list(zip(np.asarray(self.hint_points.data), positive))
        return hints_from_layers(target, rectangles, points)

    def _replace(self, result: SegmentationResult, volume: Any) -> None:
        """Put a one-target rerun's mask in place of that target's labels."""
        self.last_run = result
        if self.result is None:  # no run to replace a target in
            return self._show(result, volume)
        (target,) = result.label_values
        value = self.result.label_values[target]
        others = [v for n, v in self.result.label_values.items() if n != target]
        mask = to_layer(np.asarray(result.masks[target]), volume)
        self.labels.data = replace_target(self.labels.data, mask, value, others)
        self.status.setText(f"{target}: rerun with {len(self.hints[target])} hint(s). " + _summary(result))  # fmt: skip

    def _saved(self, result: SegmentationResult, volume: Any) -> None:
        self._show(result, volume, keep_hints=True)
        self.status.setText("wrote " + ", ".join(str(p) for p in result.outputs))


def parse_settings(text: str) -> dict[str, Any]:
    """``"points_per_side=16, window=liver"`` -> ``{"points_per_side": 16, "window":
    "liver"}``: each value read as JSON (numbers, true/false, null), else kept as text.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"setting {item!r}: write name=value, e.g. points_per_side=16.")
        try:
            out[name.strip()] = json.loads(value.strip())
        except ValueError:
            out[name.strip()] = value.strip()
    return out


def _summary(result: SegmentationResult) -> str:
    """One line per organ: found with its confidence, or not found and why."""
    parts = []
    for name, organ in result.report["organs"].items():
        if not organ["found"]:
            parts.append(f"{name}: not found ({organ.get('reason')})")
            continue
        sure = "" if organ["confidence"] is None else f", confidence {organ['confidence']:.2f}"
        parts.append(f"{name}: {organ['voxels']} voxels{sure}")
    return "; ".join(parts)
