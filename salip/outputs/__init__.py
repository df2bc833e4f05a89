"""Layer 6: what a run writes besides its masks, from its results: the statistics, the
preview strip and the HTML viewer (its data and its page)."""
