"""Telemetry: what the runtime did, kept without secrets.

* :mod:`elaria.telemetry.logging` — loguru set-up (redacted console, rotating JSONL files),
  correlation ids (``run_context`` / ``request_context``); the event helpers and ``timer`` are in
  :mod:`elaria.telemetry.log_events` (re-exported by ``logging``).
* :mod:`elaria.telemetry.events` — the inference event log: one ``InferenceEvent`` JSONL line per
  model request.
* :mod:`elaria.telemetry.ledger` — the audit ledger: one record per run from a ``RequestContext``
  (``ledger_observe``: filled from the agent loop's events; ``ledger_sqlite``: the query mirror).
* :mod:`elaria.telemetry.writer` — the append-only, failure-tolerant writer under all three.
* :mod:`elaria.telemetry.paths` — where telemetry files may live (``./logs``, the data dir).
* :mod:`elaria.telemetry.query` — reading events and records back (``elaria events|audit``).
* :mod:`elaria.telemetry.health` — the health snapshot and its HTTP endpoint.

Import the submodule you need; this package imports nothing, so ``import elaria.telemetry.x``
stays as cheap as ``x`` itself.
"""
