"""A self-contained HTML viewer of one segmentation (``--viewer PATH.html``).

:func:`viewer_html` turns a :class:`ViewerData` (display slices, label map, organs, chosen
boxes, the volume strategy's score profiles) into one HTML document that needs nothing but a
browser: the JavaScript, the CSS and the data are inline, there is no font, script or image
to fetch, and a Content-Security-Policy (``default-src 'none'``) forbids any request. The
page template is ``viewer_template.html`` in this package (package data).

Encoding (all of it decoded in the browser with plain JavaScript and the browser's own
``DecompressionStream("deflate")``, and in Python by :func:`decode_viewer`):

- Intensities are stored in the input's units (HU for CT) as a 16-bit code ``q`` per pixel,
  ``value = offset + step * q`` (rounded to the nearest code). CT is clipped to
  [-1024, 3071] HU; other modalities use a base step of 1 for whole-number data whose range
  fits 16 bits, else ``(max - min) / 65535``. With a base step of 1 the offset is a multiple
  of the step (below the minimum), so 0 and round values stay exact. Each image row is
  delta-coded (``q`` minus its left neighbour, modulo 2**16, zig-zag mapped so that small
  differences of either sign become small codes), each slice is written as its high-byte
  plane then its low-byte plane (2 x H x W bytes; the high plane is nearly all zeros), and
  every run of 8 slices is one zlib stream (level 6; compressed on several threads,
  inflated in parallel by the browser). The streams are concatenated and base64-encoded
  into a ``<script type="application/octet-stream">``; their lengths are in the metadata.
- The step is the base step (exact to 1 HU for CT) when the file fits in ``max_bytes``
  (25 MB by default); otherwise it is the finest of :data:`STEP_FACTORS` x the base step
  that fits (leaving at least :data:`MIN_LEVELS` levels), chosen by binary search on a
  sample of up to 16 slices and confirmed on the whole stack. CT noise makes 1-HU data of
  a 512x512x200 scan about 44-52 MB this way, so such a scan is stored in coarser steps:
  the test's real CT (17 HU noise) gets 10 HU steps (error at most 5 HU) in 24.3 MB, 6.5 s
  on one CPU. The page states the step.
- Labels are the NxHxW uint8 map, zlib level 6, base64.
- Everything else (title, organs, boxes, profiles, window presets, the codes' offset and
  step) is one JSON object in a ``<script type="application/json">``, with ``<``, ``>``
  and ``&`` escaped so no text can end the script element.

The page: a canvas with the slice and each organ's colour overlay, organ toggles, opacity
and outline controls, a slice slider, mouse wheel and arrow keys, CT window presets (soft
tissue, liver, lung, bone, brain, full range) or a p1-p99 window for other modalities,
editable width/level and right-drag windowing, a pixel readout, the chosen boxes with their
CLIP probability and margin (hover or click one for its competitors' probabilities), and
for the volume strategy a score-profile plot per organ and side with the extent, seeds,
where each walk stopped and why, and a marker at the current slice.
"""

from salip.outputs.viewer.data import viewer_data
from salip.outputs.viewer.page import decode_viewer, viewer_html
from salip.outputs.viewer.schema import (
    CT_RANGE,
    CT_WINDOWS,
    MAX_BYTES,
    MIN_LEVELS,
    MODALITIES,
    STEP_FACTORS,
    ViewerData,
    display_stack,
)

__all__ = [
    "CT_RANGE",
    "CT_WINDOWS",
    "MAX_BYTES",
    "MIN_LEVELS",
    "MODALITIES",
    "STEP_FACTORS",
    "ViewerData",
    "decode_viewer",
    "display_stack",
    "viewer_data",
    "viewer_html",
]
