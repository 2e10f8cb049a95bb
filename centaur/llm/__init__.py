"""The LLM layer: settings, an OpenAI-compatible client with typed errors and call logs, prompt budgets,
proposal validation, and the local default server (llama.cpp + SmolLM2-135M)."""

from centaur.llm.client import CallTracker, JSONAnswer, LLMCall, LLMClient, LLMReply
from centaur.llm.errors import LLMBadAnswer, LLMError, LLMPromptTooLong, LLMRequestError, LLMUnavailable
from centaur.llm.extract import extract_json, extract_number
from centaur.llm.proposals import Proposal, ProposalError, config_schema, validate_proposal
from centaur.llm.settings import LLMSettings, LLMSettingsError, resolve_settings
from centaur.llm.tokens import TokenCounter, cap_history

__all__ = [
    "CallTracker", "JSONAnswer", "LLMBadAnswer", "LLMCall", "LLMClient", "LLMError", "LLMPromptTooLong",
    "LLMReply", "LLMRequestError", "LLMSettings", "LLMSettingsError", "LLMUnavailable", "Proposal",
    "ProposalError", "TokenCounter", "cap_history", "config_schema", "extract_json", "extract_number",
    "resolve_settings", "validate_proposal",
]
