"""CMA-ES over mixed spaces (cmaes CatCMAwM), with its state in the study and an out-of-memory model."""
