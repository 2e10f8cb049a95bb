"""Registers `agent-code` in the method list. It is not a sampler: `centaur.tune` runs its own loop
(centaur.agentcode), because each trial edits the script rather than choosing a configuration."""

from __future__ import annotations

from optuna.samplers import BaseSampler

from centaur.methods.base import MethodContext, MethodError, register


@register("agent-code", "an LLM edits the training script itself (search/replace edits, kept if better; "
          "isolated runs, protected metric and budget)", sequential="it edits the training script in one sequential "
          "loop", own_loop=True)
def agent_code(ctx: MethodContext) -> BaseSampler:
    raise MethodError("agent-code edits the script and is not an Optuna sampler; run it with "
                      "`centaur tune SCRIPT --method agent-code` or centaur.tune(..., method='agent-code')")
