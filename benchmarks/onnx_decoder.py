"""SAM's mask decoder on CPU: torch eager against ONNX Runtime, in one run.

    pip install onnx onnxruntime
    python benchmarks/onnx_decoder.py --sam-checkpoint sam.pth --json onnx.json

Everything mode decodes single-point prompts against one slice's embedding; this times
that unit, per prompt, at ``--batch`` prompts per call (salip's CPU default, 4), and
compares the masks with segment-anything's own decoder in torch fp32:

- ``torch-upstream``: segment-anything's ``SamOnnxModel`` (the graph its ONNX export
  uses: prompt encoding, decoder, mask upsampling to the slice) run in torch eager;
- ``torch-salip``: salip's path (``salip.models.sam_runtime.decode_points_across``: the
  first decoder layer's image side shared per slice, then the same upsampling);
- ``onnxruntime-fp32``: the ``SamOnnxModel`` graph exported with ``torch.onnx.export``
  (opset 17) and run by ONNX Runtime's CPU provider;
- ``onnxruntime-int8``: the same graph with dynamic int8 weights
  (``onnxruntime.quantization.quantize_dynamic``).

Agreement is the mean and minimum IoU of the binarised masks against ``torch-upstream``
over every prompt and multimask output. Timings are the best of ``--repeats`` calls
after a warm-up, on one synthetic slice, with torch and ONNX Runtime on the same number
of threads. Nothing is cached: the exported files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.apps.bench.devtime import hardware, timed
from salip.models.sam import load_sam
from salip.models.sam_runtime import decode_points_across, encode_images


def _best(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(fastest of ``repeats`` timed calls after a warm-up, the last result)."""
    run()  # warm-up
    times, outs = zip(*(timed("cpu", run) for _ in range(repeats)))
    return min(times), outs[-1]


def _iou(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    a, b = reference > 0, other > 0
    axes = tuple(range(2, a.ndim))
    inter = (a & b).sum(axis=axes)
    union = np.maximum(1, (a | b).sum(axis=axes))
    iou = inter / union
    return float(iou.mean()), float(iou.min())


def measure(checkpoint: str, batch: int, repeats: int, size: int, seed: int) -> dict[str, Any]:
    """Per-prompt seconds and agreement of the four decoders (see the module docstring)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from segment_anything.utils.onnx import SamOnnxModel

    sam = load_sam(checkpoint)
    model = sam.model
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    (embedding,) = encode_images(model, [image], batch_size=1)
    points = torch.as_tensor(np.random.default_rng(seed + 1).random((batch, 1, 2)) * size).float()
    # SamOnnxModel takes coordinates in the encoder's frame, with the padding point that
    # SamPredictor adds when no box is given (label -1).
    coords = sam.preprocess.coords(points, (size, size), model.image_encoder.img_size)
    coords = torch.cat([coords, torch.zeros(batch, 1, 2)], dim=1)
    labels = torch.tensor([[1.0, -1.0]]).repeat(batch, 1)
    inputs = {
        "image_embeddings": embedding.features,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": torch.zeros(1, 1, *model.prompt_encoder.mask_input_size),
        "has_mask_input": torch.zeros(1),
        "orig_im_size": torch.tensor([float(size), float(size)]),
    }
    graph = SamOnnxModel(model, return_single_mask=False)
    results: dict[str, Any] = {}
    with torch.no_grad():
        seconds, (upstream, _, _) = _best(lambda: graph(**inputs), repeats)
        results["torch-upstream"] = {"s_per_prompt": seconds / batch}
        owner = torch.zeros(batch, dtype=torch.long)
        seconds, (ours, _) = _best(
            lambda: decode_points_across(
                model, embedding.features, owner, points, embedding.input_size, (size, size)
            ),
            repeats,
        )
    reference = upstream.numpy()[:, 1:]  # salip's multimask outputs drop the single mask
    results["torch-salip"] = {"s_per_prompt": seconds / batch}
    results["torch-salip"]["iou_mean"], results["torch-salip"]["iou_min"] = _iou(
        reference, ours.numpy()
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    feed = {name: value.numpy() for name, value in inputs.items()}
    with tempfile.TemporaryDirectory(prefix="salip-onnx-") as folder:
        fp32 = Path(folder) / "decoder.onnx"
        torch.onnx.export(
            graph,
            tuple(inputs.values()),
            str(fp32),
            input_names=list(inputs),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            opset_version=17,
            dynamic_axes={"point_coords": {0: "prompts"}, "point_labels": {0: "prompts"}},
            dynamo=False,
        )
        int8 = Path(folder) / "decoder_int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        for name, path in (("onnxruntime-fp32", fp32), ("onnxruntime-int8", int8)):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            seconds, out = _best(lambda s=session: s.run(None, feed), repeats)
            mean, low = _iou(upstream.numpy(), out[0])
            results[name] = {"s_per_prompt": seconds / batch, "iou_mean": mean, "iou_min": low}
    return {
        "checkpoint": checkpoint,
        "arch": sam.arch.name,
        "slice_px": size,
        "prompts_per_call": batch,
        "threads": torch.get_num_threads(),
        "hardware": hardware("cpu")["hardware"],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "decoders": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam-checkpoint", required=True, help="A SAM checkpoint file.")
    parser.add_argument("--batch", type=int, default=4, help="Prompts per call (default: 4).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls (default: 5).")
    parser.add_argument("--size", type=int, default=512, help="Slice side (default: 512).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the slice and points.")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    args = parser.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.stderr.write("onnx_decoder: pip install onnx onnxruntime first.\n")
        return 2
    result = measure(args.sam_checkpoint, args.batch, args.repeats, args.size, args.seed)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, row in result["decoders"].items():
        agreement = (
            f"IoU {row['iou_mean']:.4f} (min {row['iou_min']:.4f})" if "iou_mean" in row else "-"
        )
        sys.stdout.write(f"{name:18s} {row['s_per_prompt'] * 1000:7.1f} ms/prompt  {agreement}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
