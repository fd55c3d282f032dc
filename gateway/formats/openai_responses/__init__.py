"""OpenAI Responses (`POST /v1/responses`), a format of the OPENAI dialect (whose `api.py` is in
`openai_chat/`).

- `client.py`: Responses as the client's format of a translated request: `parse_request` (a client
  body -> the canonical request), `Renderer` and its `Encoder` (canonical answers -> Response objects
  and the exact event sequence), `stream_error`, `usage_object`, and `ResponseContext`, the state one
  request's answers share (echoed fields, stable ids, where a finished answer goes).
- `upstream.py`: Responses as the upstream of a translated request, for `responses: native`
  connections: `build_request`, `parse_response`, `usage_from`, `error_from`, `Decoder`, `Upstream`.
- `native.py`: the same-format byte fast path: `Native` (bodies pass through, with
  `previous_response_id` kept for the connection that produced it) and its stream `Passthrough`.
"""
