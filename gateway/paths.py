"""Request paths, decoded once and checked before anything routes them.

A path reaches routing only in its canonical form: repeated slashes merged (as Envoy's
`merge_slashes` does), no dot segment (`.`, `..`, also percent-encoded), no encoded `\\`, `?`, `#`
or NUL, and no encoded `/` except inside a model id where the API puts one (`GET
/v1/models/meta-llama%2Fllama-3.3-70b-instruct`, which the openai SDK sends for ids with a slash).
So nothing a client sends can make a route skip its checks (`/v1/x/../chat/completions`) or make
the upstream URL leave the connection's base path.
"""

from __future__ import annotations

from urllib.parse import unquote

from .errors import GatewayError

_REFUSED = ("\\", "?", "#", "\x00")
# Paths whose last segment is a model id, which may hold an encoded slash.
_MODEL_PATHS = (("v1", "models"), ("v1beta", "models"))


def canonical(raw_path: str, method: str) -> str | None:
    """The canonical form of a request's raw path (without its query), or None when it already is
    one. Raises GatewayError(400) for a dot segment or an encoded character that must not be in a
    path."""
    path = raw_path.partition("?")[0]
    if "//" not in path and "%" not in path and "/." not in path:
        return None  # the usual case: nothing to decode, nothing to merge
    trailing = path.endswith("/") and path != "/"
    segments = [segment for segment in path.split("/") if segment]
    model_id = method == "GET" and len(segments) == 3 and tuple(segments[:2]) in _MODEL_PATHS
    for index, segment in enumerate(segments):
        try:
            decoded = unquote(segment, errors="strict") if "%" in segment else segment
        except UnicodeDecodeError:
            raise _refused("a percent-encoding that is not UTF-8") from None
        if decoded in (".", ".."):
            raise _refused("a dot segment")
        if any(char in decoded for char in _REFUSED):
            raise _refused("an encoded \\, ?, # or NUL")
        if "/" in decoded and not (model_id and index == 2):
            raise _refused("an encoded /")
    fixed = "/" + "/".join(segments) + ("/" if trailing and segments else "")
    return None if fixed == path else fixed


def _refused(what: str) -> GatewayError:
    return GatewayError(400, f"The request path holds {what}, which no route accepts.", code="invalid_path")
