"""Peer optimizers from other libraries (HEBO, Nevergrad), each as an Optuna sampler on our search space."""
