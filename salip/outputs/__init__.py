"""Layer 6: what a run writes besides its masks, from its results: each organ's answer
(confidence, "not found"), the run report, the statistics, the preview strip and the HTML
viewer (its data and its page)."""
