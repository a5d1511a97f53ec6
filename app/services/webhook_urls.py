"""Where a webhook may point (SSRF): an http(s) URL whose host resolves to public addresses
only, unless the operator allows that host (`LORAFORGE_WEBHOOK_ALLOW_HOSTS`).

Checked when an endpoint is created and again before every attempt, which then connects to
the addresses it checked: a name that resolves elsewhere later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048


class UrlRefused(ValueError):
    """A webhook URL that must not be called."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses its host resolved to."""

    url: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    def pinned_url(self, address: IPAddress) -> str:
        """The URL with its host replaced by `address` (sent with the real Host and SNI)."""
        parts = urlsplit(self.url)
        literal = f"[{address}]" if address.version == 6 else str(address)
        return parts._replace(netloc=f"{literal}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        default = 443 if parts.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def is_public(address: IPAddress) -> bool:
    """Routable on the internet: not loopback, private, link-local (cloud metadata at
    169.254.169.254), shared, reserved, multicast or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the URL must start with https:// or http://")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry credentials; check the signature instead")
    return parts


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"cannot resolve {host!r}") from exc
    found = dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    if not found:
        raise UrlRefused(f"cannot resolve {host!r}")
    return tuple(found)


def _allowed_networks(
    allow_hosts: Sequence[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in allow_hosts:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue  # a host name
    return networks


def check_url(url: str, allow_hosts: Sequence[str]) -> Target:
    """Resolve the URL's host; refuse it when an address is neither public nor allowed."""
    parts = _parse(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if host not in {entry.lower().rstrip(".") for entry in allow_hosts}:
        networks = _allowed_networks(allow_hosts)
        for address in addresses:
            if not is_public(address) and not any(address in n for n in networks):
                raise UrlRefused(
                    f"{host!r} resolves to {address}, which is not a public address "
                    "(the operator can allow it with LORAFORGE_WEBHOOK_ALLOW_HOSTS)"
                )
    return Target(url=url, host=host, port=port, addresses=addresses)
