"""Which connection serves a request, and when the gateway moves on to the next one.

- `plan.py`: routes and aliases -> the ordered candidates of a request.
- `policy.py`: the decisions: `falls_back`, `verdict`, `retry_wait`.
- `engine.py`: the chain, one `Exchange` per request, and its end hook.
- `attempt.py`: one attempt at one connection: open, commit point, `Watchdog`, the stream pump.
- `passthrough.py`: other `/v1/*` paths, and the byte pump the HTTPS proxy's observe mode shares.

Nothing here knows a wire format: a `Relay` (contracts.py) builds each upstream request and turns
the answer into the client's format.
"""
