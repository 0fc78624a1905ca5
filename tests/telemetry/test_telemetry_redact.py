"""``redact``: every listed secret format disappears at any depth; nothing else changes."""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elaria.security.redact import REDACTED, is_secret_key, redact, secret_strength

LMSTUDIO_KEY = "sk-lm-Ab12Cd34:Zy98Xw76Vu54Ts32Rq10"
OPENAI_KEY = "sk-proj-4fGh7JkL9mNpQrStUvWx0123"
ANTHROPIC_KEY = "sk-ant-api03-abcDEF123456ghiJKL789_mno-PQR"
GITHUB_KEYS = (
    "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "gho_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "ghs_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
)
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
ALL_TOKENS = (LMSTUDIO_KEY, OPENAI_KEY, ANTHROPIC_KEY, *GITHUB_KEYS, AWS_KEY, JWT)


@pytest.mark.parametrize("token", ALL_TOKENS)
def test_token_formats_vanish_from_prose(token: str) -> None:
    out = redact(f"calling with {token}, then done")
    assert token not in out
    assert out == f"calling with {REDACTED}, then done"


def test_lmstudio_key_is_redacted_whole_including_the_part_after_the_colon() -> None:
    out = redact(f"key={LMSTUDIO_KEY}")
    assert "Zy98Xw76Vu54Ts32Rq10" not in out
    assert "Ab12Cd34" not in out
    assert redact(f"x {LMSTUDIO_KEY} y") == f"x {REDACTED} y"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "passwd",
        "secret",
        "client_secret",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "token",
        "access_token",
        "refreshToken",
        "authorization",
        "Authorization",
        "cookie",
        "Set-Cookie",
        "aws_secret_access_key",
        "private_key",
        "credentials",
    ],
)
def test_secret_named_keys_lose_their_string_values(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: "plain-looking-value"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "token_count",
        "tokens_per_second",
        "prompt_tokens",
        "completion_tokens",
        "tokens_in",
        "token_limit",
        "maxTokens",
        "auth_type",
        "token_url",
        "secret_name",
        "password_file",
        "tokenizer",
        "author",
        "keyboard",
    ],
)
def test_keys_about_tokens_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: 2048}) == {key: 2048}
    assert redact({key: "value"}) == {key: "value"}


def test_numbers_are_secret_under_strong_keys_only() -> None:
    assert secret_strength("password") == "strong"
    assert secret_strength("token") == "token"
    # A numeric PIN is a secret; an LLM token id is not.
    assert redact({"password": 123456}) == {"password": REDACTED}
    assert redact({"token": 1234, "logprob": -0.5}) == {"token": 1234, "logprob": -0.5}
    assert redact({"password": None, "token": True, "secret": ""}) == {
        "password": None,
        "token": True,
        "secret": "",
    }


def test_containers_under_a_secret_key_are_redacted_through() -> None:
    out = redact({"credentials": {"user": "bob", "pin": 1234, "tags": ["a", None]}})
    assert out == {"credentials": {"user": REDACTED, "pin": REDACTED, "tags": [REDACTED, None]}}


def test_urls_userinfo_and_query_parameters() -> None:
    assert (
        redact("GET https://bob:hunter2@example.com/p?token=abc123&page=2")
        == f"GET https://bob:{REDACTED}@example.com/p?token={REDACTED}&page=2"
    )
    token_user = "https://x0a1b2c3d4e5f6g7h8i9j@github.com/org/repo.git"
    assert redact(token_user) == f"https://{REDACTED}@github.com/org/repo.git"
    plain = "ssh://git@github.com/org/repo.git and https://example.com/a@b"
    assert redact(plain) == plain


def test_http_headers_in_text_and_as_pairs() -> None:
    text = "Authorization: Bearer abc.def.ghi\nCookie: sid=1; theme=dark\nAccept: */*"
    out = redact(text)
    assert out == f"Authorization: {REDACTED}\nCookie: {REDACTED}\nAccept: */*"
    pairs = [("Authorization", "Basic dXNlcjpwYXNz"), ("Accept", "*/*")]
    assert redact(pairs) == [("Authorization", REDACTED), ("Accept", "*/*")]


def test_key_value_text_forms() -> None:
    out = redact('password=hunter2 user=bob max_tokens=100 api-key: \'xyz\' "secret": "s3"')
    assert out == (
        f"password={REDACTED} user=bob max_tokens=100 api-key: '{REDACTED}' "
        f'"secret": "{REDACTED}"'
    )
    assert redact("token=4096") == "token=4096"  # a count, by the token rule


def test_bearer_in_prose() -> None:
    assert redact("sent Bearer abcDEF123456") == f"sent Bearer {REDACTED}"
    assert redact("bearer authentication is used") == "bearer authentication is used"


def test_embedded_json_is_parsed_and_reserialised_only_when_changed() -> None:
    doc = json.dumps({"outer": {"api_key": "k", "list": [{"password": "p"}]}, "n": 1})
    out = json.loads(redact(doc))
    assert out == {"outer": {"api_key": REDACTED, "list": [{"password": REDACTED}]}, "n": 1}
    untouched = '{ "a" :  1 }'
    assert redact(untouched) is untouched


def test_shapes_are_kept() -> None:
    pair = namedtuple("pair", "name value")
    value: Any = {"t": (1, "x", [b"ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"]), "p": pair("a", 2)}
    out = redact(value)
    assert isinstance(out["t"], tuple)
    assert out["t"][2] == [REDACTED.encode()]
    assert out["p"] == pair("a", 2)
    assert type(out["p"]) is pair


def test_depth_limit_fails_closed_and_ends_cycles() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    out = redact(cyclic)
    node = out
    for _ in range(200):
        if node == REDACTED:
            break
        node = node[0]
    assert node == REDACTED


def test_secret_in_a_key_is_redacted() -> None:
    assert redact({OPENAI_KEY: 1}) == {REDACTED: 1}


# --------------------------------------------------------------------------- properties

_token = st.sampled_from(ALL_TOKENS) | st.from_regex(
    r"\Ask-lm-[A-Za-z0-9]{8}:[A-Za-z0-9]{20}\Z", fullmatch=True
)
_separator = st.sampled_from([" ", "\n", ", ", "(", "'", '"', "=", ": ", "/", "\t"])
_plain_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@st.composite
def _secret_bearing(draw: st.DrawFn) -> tuple[Any, str]:
    token = draw(_token)
    text = draw(_plain_text) + draw(_separator) + token + draw(_separator) + draw(_plain_text)
    leaf: Any = text
    for _ in range(draw(st.integers(0, 6))):
        wrap = draw(st.sampled_from(["dict", "list", "tuple", "json"]))
        if wrap == "dict":
            leaf = {draw(st.sampled_from(["data", "x", "msg", "args"])): leaf, "n": 1}
        elif wrap == "list":
            leaf = [0, leaf, None]
        elif wrap == "tuple":
            leaf = (leaf,)
        elif isinstance(leaf, str | dict | list):
            leaf = json.dumps({"payload": leaf})
    return leaf, token


def _dump(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_secret_bearing())
def test_property_listed_tokens_never_survive_anywhere(case: tuple[Any, str]) -> None:
    value, token = case
    out = _dump(redact(value))
    assert token not in out
    # The distinctive tail of the secret must not survive either.
    assert token[-12:] not in out


_SECRETISH = ("pass", "pwd", "secret", "token", "key", "auth", "cookie", "credential", "session")
_safe_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda k: not any(word in k for word in _SECRETISH)
)
# Prose without the characters every secret format needs (=, :, @, -, _) cannot hold a secret.
_safe_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="=:@-_"),
    max_size=40,
).filter(lambda t: not any(word in t.lower() for word in (*_SECRETISH, "bearer", "sk")))
_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _safe_text
_non_secret = st.recursive(
    _scalar,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(_safe_key, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_non_secret)
def test_property_non_secrets_come_back_unchanged(value: Any) -> None:
    assert redact(value) == value


@settings(max_examples=100)
@given(st.dictionaries(_safe_key, st.integers() | st.floats(allow_nan=False), max_size=6))
def test_property_token_counts_stay(counts: dict[str, Any]) -> None:
    named = {f"{k}_tokens": v for k, v in counts.items()} | {"max_tokens": 10, "token_count": 3}
    assert redact(named) == named


@pytest.mark.parametrize(
    "secret",
    [
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_test_51H8xYzAbCdEfGhIjKlMnOp",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\nabc\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA",  # cut short
    ],
)
def test_more_provider_formats(secret: str) -> None:
    out = redact({"note": f"here: {secret} (end)"})["note"]
    assert out.startswith("here: [REDACTED]")
    assert secret.splitlines()[-1] not in out
    assert redact("pk_live_publishable_keys_are_public") == "pk_live_publishable_keys_are_public"


_TEMPLATES = (
    "password={v}",
    "db_password: '{v}'",
    "https://bob:{v}@example.com/x",
    "https://example.com/cb?code=1&access_token={v}&state=2",
    "Authorization: Bearer {v}",
    "Cookie: session={v}",
    '{{"client_secret": "{v}", "n": 1}}',
    "X-Api-Key: {v}",
)


@settings(max_examples=200)
@given(
    template=st.sampled_from(_TEMPLATES),
    value=st.text(
        alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789", min_size=8, max_size=30
    ).map(lambda v: "Zq9" + v),
    wrap=st.sampled_from(["plain", "dict", "list", "pair"]),
)
def test_property_keyed_secrets_never_survive(template: str, value: str, wrap: str) -> None:
    text = template.format(v=value)
    if wrap == "dict":
        subject: Any = {"log": {"line": text}}
    elif wrap == "list":
        subject = ["prefix", [text]]
    elif wrap == "pair":
        subject = {"headers": [("Authorization", f"Bearer {value}"), ("X-Note", text)]}
    else:
        subject = text
    assert value not in _dump(redact(subject))
