"""The LLM-based methods: shared history, prompts and fallbacks (common), and agent-hps and LLAMBO (samplers)."""
