"""A study: opening it with its identity, the worker loop, durable results, lost trials, many workers."""
