"""Conversation state for the Responses API, on every connection.

Clients send only the new input plus `previous_response_id`. The gateway stores every answer it
returns (unless `store: false`) and rebuilds the full input from the chain of stored responses, so a
Chat-only connection, or a native one that never saw the earlier turns, can serve the next turn.
"""

from __future__ import annotations

from typing import Any

from .bridge import Bridge, PerConnection
from .contracts import Candidate, UpstreamCall
from .errors import GatewayError
from .formats.openai_responses.client import ResponseContext
from .formats.openai_responses.native import Native
from .store import ResponseStore, StoredResponse


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as a list of items (a string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    items = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and "type" not in item and "role" in item:
            item = {"type": "message", **item}
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item = {**item, "content": [{"type": kind, "text": item["content"]}]}
        items.append(item)
    return items


async def resolve(store: ResponseStore, body: dict[str, Any]) -> tuple[dict[str, Any], StoredResponse | None]:
    """(the body with the whole conversation as input, the previous response) for a follow-up turn."""
    previous = body.get("previous_response_id")
    if previous is None:
        return body, None
    if not isinstance(previous, str) or not previous:
        raise GatewayError(
            400, "Invalid type for 'previous_response_id': expected a string.", param="previous_response_id"
        )
    chain = await store.chain(previous)
    if chain is None:
        raise GatewayError(
            404,
            f"Previous response with id '{previous}' not found.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    # Earlier turns' instructions are not carried over, as the API does: only this request's apply.
    history = [item for stored in chain for item in stored.input_items + list(stored.response.get("output") or [])]
    rebuilt = {key: value for key, value in body.items() if key != "previous_response_id"}
    rebuilt["input"] = history + input_items(body)
    return rebuilt, chain[-1]


class ResponsesRelay(PerConnection):
    """The Responses request's relay: fast path or bridge per connection, and each final answer stored."""

    def __init__(
        self,
        context: ResponseContext,
        native: Native,
        bridge: Bridge,
        store: ResponseStore,
        previous: StoredResponse | None,
    ) -> None:
        super().__init__(native, bridge, stream=bridge.stream)
        self.serving: Candidate | None = None
        if context.stored:
            items = input_items(context.body)
            previous_id = previous.id if previous is not None else None

            def keep(response: dict[str, Any]) -> None:
                assert self.serving is not None
                connection = self.serving.connection
                store.submit(
                    StoredResponse(
                        response["id"], connection.name, native.serves(connection), previous_id, items, response
                    )
                )

            context.on_final = keep

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        call = super().upstream_call(candidate)
        self.serving = candidate  # attempts run one at a time: a final answer is this candidate's
        return call


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def listed_items(stored: StoredResponse) -> list[dict[str, Any]]:
    """Input items as `GET /v1/responses/{id}/input_items` lists them: each with an id and a status."""
    out = []
    for index, item in enumerate(stored.input_items):
        listed = dict(item)
        prefix = _ITEM_PREFIX.get(str(item.get("type")), "item")
        listed.setdefault("id", f"{prefix}_{stored.id.removeprefix('resp_')}{index:04d}")
        if item.get("type") in ("message", "function_call", "function_call_output"):
            listed.setdefault("status", "completed")
        out.append(listed)
    return out
