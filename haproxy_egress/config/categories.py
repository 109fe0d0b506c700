"""Rule words that stand for a shipped list of names: `@doh`, the well-known public
DNS-over-HTTPS resolvers.

An application that resolves names over HTTPS to a public resolver bypasses the cluster's DNS
and its logs; with `*` or a broad wildcard in a policy it would pass silently. Policy routes
deny these names before any rule unless a route sets `deny_doh: false` (docs/policy.md).

The list names resolvers' own host names only: it cannot catch DoH to an IP literal
(`https://1.1.1.1/dns-query`), a resolver not listed here, or one a client runs itself.
Sources: the resolver lists of curl's wiki (DNS-over-HTTPS), Firefox's and Chrome's built-in
providers and the providers' own documentation. Exact names, lower case, A-labels.
"""

from __future__ import annotations

from haproxy_egress.config.vocabulary import RuleId

DOH: tuple[str, ...] = (
    # Google Public DNS
    "dns.google",
    "dns.google.com",
    "dns64.dns.google",
    "8888.google",
    # Cloudflare 1.1.1.1 (and the names Firefox and Chrome use for it)
    "cloudflare-dns.com",
    "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com",
    "mozilla.cloudflare-dns.com",
    "chrome.cloudflare-dns.com",
    "security.cloudflare-dns.com",
    "family.cloudflare-dns.com",
    # Quad9
    "dns.quad9.net",
    "dns9.quad9.net",
    "dns10.quad9.net",
    "dns11.quad9.net",
    "dns12.quad9.net",
    # Cisco OpenDNS
    "doh.opendns.com",
    "doh.familyshield.opendns.com",
    "doh.umbrella.com",
    # AdGuard DNS
    "dns.adguard.com",
    "dns.adguard-dns.com",
    "unfiltered.adguard-dns.com",
    "family.adguard-dns.com",
    # NextDNS, Control D, CleanBrowsing, Mullvad
    "dns.nextdns.io",
    "firefox.dns.nextdns.io",
    "chromium.dns.nextdns.io",
    "dns.controld.com",
    "freedns.controld.com",
    "doh.cleanbrowsing.org",
    "dns.mullvad.net",
    "doh.mullvad.net",
    "adblock.dns.mullvad.net",
    "base.dns.mullvad.net",
    # Others well known in resolver lists
    "doh.dns.sb",
    "dns.twnic.tw",
    "doh.libredns.gr",
    "dns.alidns.com",
    "doh.pub",
    "doh.360.cn",
    "dns.switch.ch",
    "dns.digitale-gesellschaft.ch",
    "doh.applied-privacy.net",
    "odvr.nic.cz",
    "doh.ffmuc.net",
    "dns0.eu",
    "zero.dns0.eu",
    "kids.dns0.eu",
    "doh.xfinity.com",
    "doh-01.spectrum.com",
    "doh.comcast.net",
)

# Rule word (after `@`) → the names it stands for.
# The word is also the rule id a denial logs (config/vocabulary.py).
CATEGORIES: dict[str, tuple[str, ...]] = {RuleId.DOH: DOH}

__all__ = ["CATEGORIES", "DOH"]
