"""Model loading: SAM checkpoints (segment-anything format) and CLIP models (open_clip)."""
