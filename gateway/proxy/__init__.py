"""The HTTP(S) proxy: apps that hard-code api.openai.com reach the gateway with `HTTPS_PROXY`.

One connection at a time, the listener reads the request head and decides:

- `CONNECT host:443` to an intercepted host: answer 200, terminate TLS with a certificate for that host
  signed by the gateway CA (`gateway/ca.py`), then hand the decrypted connection to an aiohttp request
  handler. In `managed` mode that handler comes from the runner's own server, so the requests take the
  one request path of the reverse proxy (middleware, auth, routing, fallback, translation, metrics,
  log line). In `observe` mode it comes from a small server per host (`Observer`) that forwards each
  request unchanged to the real host and records it.
- `CONNECT host:port` listed under `proxy.tunnel`: a blind byte relay.
- A plain-HTTP absolute-URI request (`POST http://api.openai.com/v1/...`) to an intercepted host: the
  head is rewritten to origin form with `Connection: close` and the connection handed over the same way
  (one request per proxy connection, so every request passes the checks below).
- Anything else: 403. Missing or wrong proxy credentials: 407. Every refusal is an HTTP response.

Connections the proxy makes itself (tunnels, observe mode) go through `Targets`: `proxy.host_map`,
then DNS, then the address check (no loopback, link-local or private address unless
`proxy.allow_private`), and connect only to the addresses that were checked.

- `listener.py`: `ProxySite` (the listener on the gateway's runner, its credentials check and counter),
  `ProxyProtocol` (one client connection: head, dispatch, hand-over, tunnel, refusal), `Refusal`,
  `ProxyStartError`, the request-head parsing.
- `observe.py`: `Observer` (observe mode's forwarding and records), its resolver, the hop-by-hop
  header set.
- `targets.py`: `Targets` (host_map, DNS, the private-address check, connecting), `PrivateAddress`.

Imports go to those modules (`from gateway.proxy.listener import ProxySite`); this file exports nothing.
"""
