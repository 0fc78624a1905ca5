"""The agent: the loop that drives a model through tool calls, and what it needs.

* :mod:`~elaria.agent.loop` — :class:`~elaria.agent.loop.AgentLoop` (rounds, tools, history);
* :mod:`~elaria.agent.tools` — :class:`~elaria.agent.tools.Tool` and the registry (the pinned
  contract shared with the MCP bridge and ``python_tools``);
* :mod:`~elaria.agent.guard` — the pipeline before every tool runs, the retry budget;
* :mod:`~elaria.agent.approval` — auto/ask/deny per tool, remembered rules and their file;
* :mod:`~elaria.agent.repair` — cheap repairs of malformed tool calls;
* :mod:`~elaria.agent.state` — a round's calls and results as plain objects;
* :mod:`~elaria.agent.events` — the typed events of a run;
* :mod:`~elaria.agent.backend` — LM Studio discovery and the embedded fallback;
* :mod:`~elaria.agent.recorder` — inference events and the audit record per run;
* :mod:`~elaria.agent.workspace` — the sample workspace and the built-in tools for it;
* :mod:`~elaria.agent.render` — terminal rendering for ``elaria run`` / ``elaria chat``.

Most users need only :class:`elaria.Runtime`. Nothing is imported here, so importing a
submodule stays cheap.
"""
