"""Who is the client? The peer address, or a forwarded one from a trusted proxy only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Literal

from resilient.asgi._common import Scope

__all__ = ["ClientIP", "parse_forwarded", "parse_x_forwarded_for"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A forwarded chain longer than this is an attack or a misconfiguration; we
# read only its right-most entries (the ones our own proxies appended).
_MAX_HOPS = 32
# At most this many bytes of the forwarded header lines are read, counted from
# the right: what our proxies appended is always within it, and what a client
# wrote to the left of it is what gets cut.
_MAX_HEADER = 8192


def _networks(trusted: Iterable[str | IPNetwork | IPAddress], param: str) -> tuple[IPNetwork, ...]:
    if isinstance(trusted, str):
        trusted = (trusted,)
    nets: list[IPNetwork] = []
    for item in trusted:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            nets.append(item)
            continue
        if isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
            nets.append(ipaddress.ip_network(item))
            continue
        if not isinstance(item, str):
            raise TypeError(f"{param} must contain CIDR strings or ipaddress networks, got {item!r}")
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{param} must contain IP addresses or CIDR networks such as '10.0.0.0/8', got {item!r}"
            ) from None
    return tuple(nets)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
    return ip


def _parse_node(node: str) -> IPAddress | None:
    """An address from an X-Forwarded-For entry or a Forwarded ``for=`` node.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]``, ``[2001:db8::1]:80``
    and a bare ``2001:db8::1``; anything else (``unknown``, ``_hidden``,
    garbage) gives ``None``.
    """
    node = node.strip().strip('"').strip()
    if not node or len(node) > 64:
        return None
    if node[0] == "[":
        end = node.find("]")
        if end < 0:
            return None
        rest = node[end + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        return _parse_ip(node[1:end])
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        if not port.isdigit():
            return None
        node = host
    return _parse_ip(node)


def parse_x_forwarded_for(values: Iterable[str]) -> list[str]:
    """The entries of one or more ``X-Forwarded-For`` values, left to right (raw strings)."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.split(","))
    return out


def parse_forwarded(values: Iterable[str]) -> list[str]:
    """The ``for=`` nodes of one or more RFC 7239 ``Forwarded`` values, left to right.

    An element without a ``for=`` parameter gives an empty string, so that it
    still counts as a hop (one that says nothing we can use).
    """
    out: list[str] = []
    for value in values:
        for element in _split_quoted(value, ","):
            node = ""
            for pair in _split_quoted(element, ";"):
                name, sep, val = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    node = val.strip()
                    break
            out.append(node)
    return out


def _split_quoted(value: str, sep: str) -> list[str]:
    if '"' not in value:
        return value.split(sep)
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _rsplit_quoted(value: str, sep: str) -> list[str]:
    """``value`` split on ``sep`` outside quoted strings, right-most part first.

    Scanning from the right keeps the parts our own proxies appended intact
    whatever the client wrote to their left (an unbalanced quote, or a value
    cut in the middle of a quoted string).
    """
    if '"' not in value:
        parts = value.split(sep)
        parts.reverse()
        return parts
    parts = []
    end = len(value)
    quoted = False
    for i in range(len(value) - 1, -1, -1):
        ch = value[i]
        if ch == '"':
            # Escaped (inside a quoted string) when an odd run of backslashes precedes it.
            j = i
            while j > 0 and value[j - 1] == "\\":
                j -= 1
            if (i - j) % 2 == 0:
                quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(value[i + 1 : end])
            end = i
    parts.append(value[:end])
    return parts


def _for_node(element: str) -> str:
    """The ``for=`` node of one ``Forwarded`` element, or ``""`` without one."""
    for pair in _split_quoted(element, ";"):
        name, sep, val = pair.partition("=")
        if sep and name.strip().lower() == "for":
            return val.strip()
    return ""


def _nodes_from_right(values: list[bytes], forwarded: bool) -> Iterator[str | None]:
    """The forwarded chain's nodes, right-most first: at most ``_MAX_HOPS`` in ``_MAX_HEADER`` bytes.

    The budget is spent from the right, so the entries our proxies appended
    are always read; a node cut by the budget is ``None`` (a hop we cannot
    read), and nothing to its left is read.
    """
    budget = _MAX_HEADER
    hops = _MAX_HOPS
    for raw in reversed(values):
        cut = len(raw) > budget
        if cut:
            raw = raw[len(raw) - budget :]
        budget -= len(raw)
        value = raw.decode("latin-1")
        parts = _rsplit_quoted(value, ",") if forwarded else value.split(",")[::-1]
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if cut and i == last:
                yield None
                return
            yield _for_node(part) if forwarded else part
            hops -= 1
            if not hops:
                return


class ClientIP:
    """The default client key of :class:`~resilient.asgi.RateLimit`: the client's IP address.

    The key is the peer address from ``scope["client"]``. Forwarded headers
    are read **only** when that peer is in ``trusted_proxies``: anyone can
    send ``X-Forwarded-For: 1.2.3.4``, so trusting it from an arbitrary peer
    would let every client pick its own rate-limit bucket.

    With a trusted peer, the chain is walked from right to left (the right-most
    entries were appended by our own proxies), skipping trusted proxies; the
    first address that is not a trusted proxy is the client. An unparseable
    entry stops the walk at the last address known to be good.

    Args:
        trusted_proxies: IP addresses or CIDR networks of your own reverse
            proxies / load balancers (``"10.0.0.0/8"``, ``"127.0.0.1"``).
        header: which header the proxies maintain: ``"x-forwarded-for"`` or
            ``"forwarded"`` (RFC 7239). Only one is read: a proxy that appends
            to one of them passes the other through from the client unchanged.
        ipv6_prefix: IPv6 clients are grouped by this prefix length (64 by
            default: one end site usually owns a whole /64, so a per-address
            key would be trivially evaded). 128 keys each address.
        fallback: the key when the scope has no ``client`` (e.g. a Unix socket).
    """

    __slots__ = ("_fallback", "_header", "_kind", "_nets", "_prefix")

    def __init__(
        self,
        trusted_proxies: Iterable[str | IPNetwork | IPAddress] = (),
        *,
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
        ipv6_prefix: int = 64,
        fallback: str = "unknown",
    ) -> None:
        self._nets = _networks(trusted_proxies, "trusted_proxies")
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(f"header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        self._header = header.encode("ascii")
        self._kind = header
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be an int in [1, 128], got {ipv6_prefix!r}")
        self._prefix = ipv6_prefix
        if not isinstance(fallback, str):
            raise TypeError(f"fallback must be a str, got {fallback!r}")
        self._fallback = fallback

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]:
        """The trusted proxy networks."""
        return self._nets

    def _trusted(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._nets)

    def _key(self, ip: IPAddress) -> str:
        if isinstance(ip, ipaddress.IPv6Address) and self._prefix < 128:
            return str(ipaddress.IPv6Network((int(ip) >> (128 - self._prefix) << (128 - self._prefix), self._prefix)))
        return str(ip)

    def __call__(self, scope: Scope) -> str:
        """The client key of this request."""
        client = scope.get("client")
        if not client:
            return self._fallback
        host = client[0]
        if not isinstance(host, str) or not host:
            return self._fallback
        if not self._nets:
            # Fast path: no proxy to trust, no header to read. IPv4 peers (and
            # non-IP names such as "testclient") are their own key.
            if ":" not in host:
                return host
            ip = _parse_ip(host)
            return host if ip is None else self._key(ip)
        peer = _parse_ip(host)
        if peer is None:
            return host
        if not self._trusted(peer):
            return self._key(peer)
        return self._key(self._walk(scope, peer))

    def _walk(self, scope: Scope, peer: IPAddress) -> IPAddress:
        name = self._header
        values = [value for key, value in scope.get("headers") or () if key == name]
        if not values:
            return peer
        client = peer
        for node in _nodes_from_right(values, self._kind == "forwarded"):
            ip = None if node is None else _parse_node(node)
            if ip is None:
                # A hop we cannot read: everything to its left is unverifiable,
                # so the last good address (a trusted proxy) is the best we know.
                break
            client = ip
            if not self._trusted(ip):
                break
        return client

    def __repr__(self) -> str:
        nets = ", ".join(str(n) for n in self._nets)
        return f"ClientIP(trusted_proxies=({nets}), header={self._kind!r})"
