"""Gemini generateContent (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
`:countTokens`), the wire format of the Gemini dialect.

- `client.py`: Gemini as the client's format of a translated request: `parse_request` (a client
  body -> canonical), `Renderer` and `Encoder` (canonical answers -> bodies and SSE chunks, the
  JSON array of `:streamGenerateContent` without `alt=sse`), `stream_error`, `usage_object`.
- `upstream.py`: Gemini as the upstream of a translated request: `build_request`, `parse_response`,
  `usage_from`, `error_from`, `Decoder`, `Upstream`; and the thoughtSignature helpers both sides use
  (`join_signature`, `split_signature`: the signature rides inside the tool-call id).
- `native.py`: Gemini to a Gemini connection, bytes passed through: `Native`, `NativeCountTokens`
  (streams through `base.DecodedPassthrough`).
- `api.py`: the dialect beyond one request (`API`): error bodies, model listings, the probe's format.
"""
