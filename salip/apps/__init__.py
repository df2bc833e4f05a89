"""Layer 8: applications on the API: the CLI, the benchmark and head training."""
