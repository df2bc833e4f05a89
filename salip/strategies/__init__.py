"""Layer 5: strategies that drive a volume through the engines."""
