"""Layer 7: ``salip.segment``, ``salip.propose`` (:mod:`salip.api.proposals`) and the method factory."""
