"""Layer 6: ``salip.segment``, ``salip.propose`` and the method factory."""
