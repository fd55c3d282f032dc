"""Anthropic Messages (`POST /v1/messages`, and `/v1/messages/count_tokens`), the Anthropic dialect's
wire format.

- `client.py`: Messages as the CLIENT's format of a translated request: a client's body -> the
  canonical request (`parse_request`), canonical answers -> Message bodies and stream events
  (`Renderer`, `Encoder`), the closing error event (`stream_error`), usage in Messages' shape.
- `upstream.py`: Messages as the UPSTREAM of a translated request: the canonical request -> a Messages
  body (`build_request`, sampling parameters per `anthropic_sampling_rules`), answers and stream
  events -> canonical ones (`parse_response`, `Decoder`), error bodies and events -> UpstreamError
  (`error_from`); `Upstream` is the `contracts.UpstreamFormat`.
- `native.py`: a Messages request to an Anthropic connection, bytes passed through with the model
  rewritten (`Native`, also the count_tokens path); its streams use `base.DecodedPassthrough`.
- `api.py`: what the gateway knows of the Anthropic dialect beyond one request (`API`): error bodies,
  model listings, the forwarded `anthropic-beta` header, the format a connection test speaks.
"""
