"""Layer 7: ``salip.segment``, ``salip.propose`` and the method factory."""
