"""validate_model_id and validate_ws_url."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import validate_model_id, validate_ws_url


@pytest.mark.parametrize(
    "model_id",
    [
        "google/gemma-3-270m",
        "lmstudio-community/gemma-3-1b-it-GGUF",
        "qwen2.5-7b-instruct@q4_k_m",
        "text-embedding-nomic-embed-text-v1.5",
        "a",
        "a/b/c",
        "model:latest",
        "owner/model:v1.2",
        "a" * 96,
        "x.y_z-1",
        "a.-b",
    ],
)
def test_valid_model_ids(model_id: str) -> None:
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize(
    "model_id",
    [
        "",
        "a/b/c/d",
        "-a",
        ".a",
        "_a",
        "a-",
        "a.",
        "a..b",
        "a--b",
        "a//b",
        "/a",
        "a/",
        "a:b:c",
        "a:b@c",
        "a@",
        "é",
        "a" * 97,
        "b/" + "a" * 97,
        "a b",
        "a\n",
        "a:" + "t" * 65,
        "../etc",
        "a/../b",
        "x" * 200 + "/" + "y" * 60,
    ],
)
def test_invalid_model_ids(model_id: str) -> None:
    with pytest.raises(SecurityViolation) as info:
        validate_model_id(model_id)
    assert info.value.rule == "model.id"


def test_model_id_total_length() -> None:
    long_ok = "/".join(["a" * 80] * 3) + ":" + "t" * 10
    assert len(long_ok) <= 256
    assert validate_model_id(long_ok) == long_ok
    too_long = "/".join(["a" * 96] * 3) + ":" + "t" * 10
    with pytest.raises(SecurityViolation):
        validate_model_id(too_long)


@settings(deadline=None)  # timing on a shared machine is not the property
@given(st.from_regex(r"[a-z0-9]{1,20}(/[a-z0-9]{1,20}){0,2}(@[a-z0-9_]{1,10})?", fullmatch=True))
def test_property_simple_ids_pass(model_id: str) -> None:
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize(
    "url",
    [
        "ws://localhost:1234",
        "WS://localhost:1234",
        "ws://127.0.0.1:1234",
        "ws://127.5.6.7",
        "ws://[::1]:1234/path",
        "wss://localhost",
        "ws://localhost:65535",
    ],
)
def test_loopback_urls_pass(url: str) -> None:
    assert validate_ws_url(url) == url


def test_remote_hosts_need_the_allowlist_and_tls() -> None:
    assert validate_ws_url("wss://lm.example.com", allowed_remote_hosts=["LM.Example.com"])
    assert validate_ws_url("wss://bücher.example", allowed_remote_hosts=["xn--bcher-kva.example"])
    assert validate_ws_url("wss://192.168.1.5:1234", allowed_remote_hosts=["192.168.1.5"])
    with pytest.raises(SecurityViolation) as info:
        validate_ws_url("ws://192.168.1.5:1234", allowed_remote_hosts=["192.168.1.5"])
    assert info.value.rule == "url.plaintext_remote"
    assert validate_ws_url(
        "ws://192.168.1.5:1234", allowed_remote_hosts=["192.168.1.5"], allow_plaintext_remote=True
    )
    with pytest.raises(SecurityViolation) as info:
        validate_ws_url("wss://evil.example")
    assert info.value.rule == "url.remote_not_allowed"
    assert validate_ws_url("wss://[fe80::1]:1234", allowed_remote_hosts=["[FE80::1]"])
    assert validate_ws_url("wss://[fe80::1]", allowed_remote_hosts=["fe80:0:0::1"])
    with pytest.raises(SecurityViolation):
        validate_ws_url("wss://lm.example.com", allowed_remote_hosts=["", "..", "lm.example"])


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://localhost:1234", "url.scheme"),
        ("localhost:1234", "url.scheme"),
        ("", "url.invalid"),
        ("ws://user:pw@localhost", "url.userinfo"),
        ("ws://@localhost", "url.userinfo"),
        ("ws://localhost#frag", "url.fragment"),
        ("ws://localhost/#", "url.fragment"),
        ("ws://localhost:0", "url.port"),
        ("ws://localhost:65536", "url.port"),
        ("ws://localhost:01234", "url.port"),
        ("ws://localhost:12a", "url.port"),
        ("ws://local host", "url.characters"),
        ("ws://localhost\t:1234", "url.characters"),
        ("ws://localhost\n", "url.characters"),
        ("ws:\\\\localhost", "url.characters"),
        ("ws://localhost\\@evil.com", "url.characters"),
        ("ws://local\u200bhost", "url.characters"),
        ("ws://2130706433", "url.ip_noncanonical"),
        ("ws://0x7f000001", "url.ip_noncanonical"),
        ("ws://0177.0.0.1", "url.ip_noncanonical"),
        ("ws://127.1", "url.ip_noncanonical"),
        ("ws://127.000.0.1", "url.ip_noncanonical"),
        ("ws://[::ffff:127.0.0.1]", "url.ip_noncanonical"),
        ("ws://[0:0:0:0:0:0:0:1]", "url.ip_noncanonical"),
        ("ws://0.0.0.0:1234", "url.ip_noncanonical"),
        ("ws://[::]:1234", "url.ip_noncanonical"),
        ("ws://localhost.:1234", "url.remote_not_allowed"),
        ("ws://" + "a" * 2050, "url.too_long"),
        ("ws://:1234", "url.host"),
    ],
)
def test_bad_urls_are_refused(url: str, rule: str) -> None:
    with pytest.raises(SecurityViolation) as info:
        validate_ws_url(url)
    assert info.value.rule == rule


def test_non_canonical_ips_are_refused_even_when_allowlisted() -> None:
    with pytest.raises(SecurityViolation) as info:
        validate_ws_url("wss://3232235781", allowed_remote_hosts=["3232235781"])
    assert info.value.rule == "url.ip_noncanonical"
