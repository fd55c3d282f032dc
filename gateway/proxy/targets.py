"""Where the proxy connects for a real host, and which addresses it refuses (the SSRF rules).

Every connection the proxy makes itself (tunnels, observe mode) goes through `Targets`: `proxy.host_map`,
then DNS, then the address check (no loopback, link-local or private address unless
`proxy.allow_private`), and connects only to the addresses that were checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from ..config.model import ProxyConfig

CONNECT_TIMEOUT = 10.0  # to a real host (tunnels, observe mode)


class PrivateAddress(OSError):
    """Every address the target resolves to is one the proxy must not connect to."""


def _public(address: str) -> bool:
    """True when the proxy may connect to `address` without `proxy.allow_private`: a global unicast
    address (an IPv4-mapped IPv6 address judged as its IPv4 address; a zone index ignored)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class Targets:
    """Where the proxy connects for a real host: host_map, DNS, then the private-address check."""

    def __init__(self, config: ProxyConfig) -> None:
        self.host_map = config.host_map
        self.allow_private = config.allow_private

    async def resolve(self, host: str, port: int) -> list[tuple[socket.AddressFamily, str, int]]:
        """The addresses the proxy may connect to for `host:port`, as (family, address, port), in DNS
        order without repeats; `proxy.host_map` may replace the host and the port.

        Raises `PrivateAddress` when none is allowed, `OSError` when the host does not resolve.
        """
        target, mapped_port = self.host_map.get(host, (host, None))
        port = mapped_port or port
        try:
            ip = ipaddress.ip_address(target)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            found = [(family, str(ip), port)]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(target, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host} ({exc.strerror})") from None
            found = [(socket.AddressFamily(info[0]), str(info[4][0]), port) for info in infos]
        allowed = list(dict.fromkeys(a for a in found if self.allow_private or _public(a[1])))
        if not allowed:
            raise PrivateAddress(
                f"{host} resolves only to loopback, link-local or private addresses, which this proxy does not "
                "connect to (proxy.allow_private: true allows them)"
            )
        return allowed

    async def connect(self, host: str, port: int, factory: Any) -> tuple[asyncio.Transport, Any]:
        """Connect to the first checked address that answers; return (transport, protocol).

        Raises `PrivateAddress` when every address is refused, `TimeoutError` when the last address
        tried timed out, and `OSError` when the host does not resolve or no address answered; each
        message names the host. The listener turns them into its answers to the client.
        """
        addresses = await self.resolve(host, port)
        loop = asyncio.get_running_loop()
        failure = "no address answered"
        for family, address, target_port in addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await loop.create_connection(factory, address, target_port, family=family)
            except TimeoutError:
                failure = f"connect timed out after {CONNECT_TIMEOUT:g} s"
            except OSError as exc:
                failure = (exc.strerror or type(exc).__name__).lower()
        message = f"cannot connect to {host}:{port} ({failure})"
        # "timed out" also matches the OS's own ETIMEDOUT ("connection timed out"), not only ours.
        raise TimeoutError(message) if "timed out" in failure else OSError(message)
