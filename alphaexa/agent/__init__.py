"""The agent layer: the JSON tool-call protocol, the tool registry, the tools, the sandbox
(the only code that starts untrusted processes) and the agent loop.  docs/agent.md."""
