"""The network policy's parsing and the operator's rules: every entry form, every bound at
its edge, and every refusal naming what it refuses. Pure data: no root, no network."""

from __future__ import annotations

import ipaddress

import pytest

from corral.api.errors import InvalidArgumentError
from corral.api.network import (ALWAYS_DENIED, MAX_ENTRIES, MAX_ENTRY, NetOperator,
                                NetworkPolicy, Rule)


@pytest.mark.parametrize(("text", "shown"), [
    ("198.51.100.7", "198.51.100.7"), ("198.51.100.0/24", "198.51.100.0/24"),
    ("198.51.100.7/24", "198.51.100.0/24"), ("198.51.100.7:1", "198.51.100.7:1"),
    ("198.51.100.7:65535", "198.51.100.7:65535"), (" 198.51.100.7 ", "198.51.100.7"),
    ("2001:db8::1", "2001:db8::1"), ("2001:DB8::/32", "2001:db8::/32"),
    ("[2001:db8::1]:443", "[2001:db8::1]:443"), ("[2001:db8::/32]", "2001:db8::/32"),
    ("Example.ORG", "example.org"), ("*.example.org:443", "*.example.org:443"),
    ("a-b.c-d.example", "a-b.c-d.example"),
])
def test_entries_parse_and_print_back(text: str, shown: str) -> None:
    rule = Rule.parse(text)
    assert str(rule) == shown
    assert Rule.parse(str(rule)) == rule


@pytest.mark.parametrize(("text", "message"), [
    ("", "give an IP"), ("   ", "give an IP"), (None, "give an IP"), (7, "give an IP"),
    ("198.51.100.7:0", "port '0' is not 1 to 65535"),
    ("198.51.100.7:65536", "port '65536'"), ("198.51.100.7:x", "port 'x'"),
    ("198.51.100.7:", "port ''"), ("[2001:db8::1", "written \\[address\\]:port"),
    ("[2001:db8::1]443", "written \\[address\\]:port"), ("1.2.3", "not an IP address"),
    ("1.2.3.4/33", "not an IP address"), ("256.1.1.1", "not an IP address"),
    ("-bad.example", "not an IP address"), ("bad-.example", "not an IP address"),
    ("a..example", "not an IP address"), ("localhost", "not an IP address"),
    ("*.*.example", "not an IP address"), ("ex ample.org", "not an IP address"),
    ("exa_mple.org", "not an IP address"), (f"{'a' * 64}.org", "not an IP address"),
    ("x" * (MAX_ENTRY + 1), f"longer than {MAX_ENTRY}"),
])
def test_bad_entries_are_refused_by_name(text: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Rule.parse(text)


def test_an_entry_of_the_longest_length_parses() -> None:
    name = ".".join(["a" * 60] * 4) + ".org"  # 248 characters: a valid domain
    padded = " " * (MAX_ENTRY - len(name)) + name
    assert len(padded) == MAX_ENTRY and Rule.parse(padded).domain == name


def test_policies_and_their_limits() -> None:
    assert NetworkPolicy.parse(None) == NetworkPolicy.parse("none") == NetworkPolicy()
    assert not NetworkPolicy().enabled and NetworkPolicy.parse("all").enabled
    lists = NetworkPolicy.parse({"allow": ["198.51.100.1", "198.51.100.1"], "deny": []})
    assert lists.enabled and lists.allow == (Rule.parse("198.51.100.1"),)  # de-duplicated
    assert NetworkPolicy.parse({"deny": ["198.51.100.1"]}).to_wire() == {
        "allow": [], "deny": ["198.51.100.1"]}
    full = [f"198.51.100.{i}" for i in range(200)] + [f"203.0.113.{i}" for i in range(56)]
    assert len(NetworkPolicy.parse({"allow": full}).allow) == MAX_ENTRIES
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_ENTRIES}"):
        NetworkPolicy.parse({"allow": [*full, "192.0.2.1"]})
    for bad, message in (("open", "not one of"), (["all"], "must be \"none\""),
                         ({"allow": "198.51.100.1"}, "must be a list"),
                         ({"permit": []}, "unknown keys \\['permit'\\]")):
        with pytest.raises(InvalidArgumentError, match=message):
            NetworkPolicy.parse(bad)


def test_the_operator_rules_bound_what_a_tenant_gets() -> None:
    operator = NetOperator.parse(open_ranges=["10.251.0.0/24"], deny=["203.0.113.0/24"],
                                 max_entries=2)
    assert operator.check(NetworkPolicy.parse({"allow": ["10.251.0.2:80"]}))
    with pytest.raises(InvalidArgumentError, match=r"10\.0\.0\.0/8 is never reachable"):
        operator.check(NetworkPolicy.parse({"allow": ["10.252.0.2"]}))
    with pytest.raises(InvalidArgumentError, match=r"203\.0\.113\.0/24 is never reachable"):
        operator.check(NetworkPolicy.parse({"allow": ["203.0.113.5"]}))
    with pytest.raises(InvalidArgumentError, match=r"100\.64\.0\.0/10 is never"):  # the pool
        operator.check(NetworkPolicy.parse({"allow": ["100.96.0.6"]}))
    with pytest.raises(InvalidArgumentError, match="allows at most 2"):
        operator.check(NetworkPolicy.parse({"allow": ["198.51.100.1", "198.51.100.2"],
                                            "deny": ["198.51.100.3"]}))
    with pytest.raises(InvalidArgumentError, match="no unrestricted egress"):
        NetOperator.parse(allow_all=False).check(NetworkPolicy.parse("all"))
    denied = {str(n) for n in operator.denied()}
    assert "10.251.0.0/24" not in denied and "10.0.0.0/9" in denied  # opened: cut out
    assert {"169.254.0.0/16", "127.0.0.0/8", "100.96.0.0/16", "203.0.113.0/24"} <= denied
    covered = [n for n in operator.denied() if ipaddress.ip_address("10.251.0.2") in n]
    assert covered == []


@pytest.mark.parametrize(("opened", "message"), [
    ("169.254.169.254/32", "169.254.0.0/16, which is never opened"),
    ("127.0.0.0/8", "never opened"), ("0.0.0.0/0", "never opened"),
    ("fe80::/10", "never opened"), ("::ffff:0:0/96", "never opened"),
    ("100.96.1.0/24", "100.96.0.0/16, which is never opened"), ("10.0.0.300/8", "not a CIDR"),
])
def test_what_the_operator_can_never_open(opened: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        NetOperator.parse(open_ranges=[opened])


@pytest.mark.parametrize(("pool", "message"), [
    ("198.51.100.0/24", "must lie in a private range"), ("100.64.0.0/12", "a /16 to a /28"),
    ("100.64.0.0/29", "a /16 to a /28"), ("fd00::/64", "not an IPv4 CIDR"),
])
def test_the_sandbox_pool_is_private_and_sized(pool: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        NetOperator.parse(pool=pool)


def test_metadata_and_mapped_addresses_are_always_denied() -> None:
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "::1",
                    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                    "fc00::1", "fe80::1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in network for network in ALWAYS_DENIED), address


CEILING = NetworkPolicy.parse_flags(["allow:pypi.org:443,*.pythonhosted.org,203.0.113.0/24",
                                     "deny:203.0.113.9"])


@pytest.mark.parametrize("asked", [
    ["pypi.org:443"], ["files.pythonhosted.org"], ["a.b.pythonhosted.org:443"],
    ["*.cdn.pythonhosted.org"], ["203.0.113.0/25:80"], ["203.0.113.7"],
])
def test_a_ceiling_lets_through_what_it_covers(asked: list[str]) -> None:
    policy = CEILING.narrowed(asked)
    assert policy.to_wire() == {"allow": asked, "deny": ["203.0.113.9"]}


@pytest.mark.parametrize(("asked", "named"), [
    (["pypi.org"], "'pypi.org'"),  # every port: wider than :443
    (["pypi.org:80"], "'pypi.org:80'"), (["pythonhosted.org"], "'pythonhosted.org'"),
    (["*.hosted.org"], "'\\*.hosted.org'"), (["203.0.112.0/23"], "'203.0.112.0/23'"),
    (["evil.example"], "'evil.example'"), (["pypi.org:443", "198.51.100.1"], "'198.51.100.1'"),
])
def test_a_ceiling_refuses_what_goes_beyond_it_by_name(asked: list[str], named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"{named} is beyond what the operator"):
        CEILING.narrowed(asked)


def test_no_ceiling_allows_nothing_and_all_allows_any_entry() -> None:
    assert NetworkPolicy().narrowed([]).mode == "none"
    assert CEILING.narrowed([]).mode == "none"
    with pytest.raises(InvalidArgumentError, match="allows none"):
        NetworkPolicy().narrowed(["pypi.org"])
    assert NetworkPolicy.parse("all").narrowed(["example.org:443"]).to_wire() == {
        "allow": ["example.org:443"], "deny": []}
    with pytest.raises(InvalidArgumentError, match="not an IP address"):
        CEILING.narrowed(["1.2.3"])
