"""Layer 4: the roles a strategy composes (encoder, proposer, recogniser, refiner) and their stages."""
