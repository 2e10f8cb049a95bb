"""Optimization methods. Every fixed-space method is an Optuna sampler, selected by name."""

from centaur.methods.base import MethodContext, MethodError, available_methods, create_sampler, register

__all__ = ["MethodContext", "MethodError", "available_methods", "create_sampler", "register"]
