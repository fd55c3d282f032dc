"""OpenAI Chat Completions (`POST /chat/completions`), and the OpenAI dialect's shared surface.

- `client.py`: Chat as the client's format of a translated request: `parse_request` (a Chat body ->
  canonical), `Renderer` and its `Encoder` (canonical answers -> Chat bodies and chunks),
  `stream_error`, `usage_object`, and the request-side tables.
- `upstream.py`: Chat as the upstream of a translated request: `build_request`, `parse_response`,
  `usage_from`, `error_from`, `Decoder` (with `ThinkSplitter` for `<think>` tags) and `Upstream`.
- `native.py`: the same-format byte fast path for Chat Completions, completions and embeddings:
  `Native`, and `Passthrough` for its streams (events pass as bytes, parsed only for the commit
  point, usage and errors).
- `api.py`: the OpenAI dialect beyond one request (`API`): error bodies, model listings, the format
  a connection test speaks.
"""
