"""The agent-code method: an LLM edits the training script; edited runs are isolated and their metric protected."""
