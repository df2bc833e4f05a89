"""Layer 1: errors, settings, the organ vocabulary, label sets and prompt files."""
