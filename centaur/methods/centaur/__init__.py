"""Centaur: CMA-ES whose state is shown to an LLM that proposes some of the trials."""
