"""Who is asking: the client's address, believed from proxies only when they are trusted.

Behind a reverse proxy every request comes from the proxy's address, and the
client's own is in ``X-Forwarded-For`` or ``Forwarded``. Those headers are
written by whoever sends the request, so they are read only when the peer is
in a ``--trusted-proxy`` range, and then from the right: the rightmost address
that is not itself a trusted proxy is the one the last trusted hop saw.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import hdrs, web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDR ranges (a bare address is a /32 or /128); ValueError names the bad one."""
    networks = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR range (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def ip(text: str | None) -> Address | None:
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # an IPv4 address with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address is this machine's loopback (names are not resolved)."""
    host = host.strip().lower()
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    address = ip(host)
    return address is not None and address.is_loopback


def host_of(authority: str) -> str:
    """``example.com`` from ``example.com:8080``, ``::1`` from ``[::1]:80``."""
    return urlsplit(f"//{authority}").hostname or ""


class Clients:
    def __init__(self, trusted: tuple[Network, ...] = ()) -> None:
        self.trusted = trusted

    def _is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def peer(self, request: web.Request) -> Address | None:
        return ip(request.remote)

    def address(self, request: web.Request) -> str:
        """The client's address, for rate limits and the audit."""
        peer = self.peer(request)
        if peer is None:
            return request.remote or "unknown"
        if not self._is_trusted(peer):
            return str(peer)
        chain = self._forwarded_for(request)
        for hop in reversed(chain):
            address = ip(hop)
            if address is None:
                return str(peer)  # a hop we cannot read: believe nothing beyond it
            if not self._is_trusted(address):
                return str(address)
        return str(ip(chain[0]) or peer) if chain else str(peer)

    def scheme(self, request: web.Request) -> str:
        """``https`` when a trusted proxy says the client used it."""
        if self._is_trusted(self.peer(request)):
            forwarded = request.forwarded
            if forwarded and forwarded[-1].get("proto"):
                return str(forwarded[-1]["proto"]).lower()
            proto = request.headers.get("X-Forwarded-Proto")
            if proto:
                return proto.split(",")[-1].strip().lower()
        return request.scheme

    @staticmethod
    def is_direct_loopback(request: web.Request) -> bool:
        """A loopback peer with no sign of a proxy in between."""
        peer = ip(request.remote)
        if peer is None or not peer.is_loopback:
            return False
        return hdrs.FORWARDED not in request.headers and hdrs.X_FORWARDED_FOR not in request.headers

    @staticmethod
    def _forwarded_for(request: web.Request) -> list[str]:
        if hdrs.FORWARDED in request.headers:
            return [str(element.get("for", "")) for element in request.forwarded]
        return [
            hop.strip()
            for header in request.headers.getall(hdrs.X_FORWARDED_FOR, [])
            for hop in header.split(",")
        ]
