"""check_shell_arg and check_program."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import check_program, check_shell_arg


@pytest.mark.parametrize(
    "arg",
    [
        "file name.txt",
        "*.py",
        "~",
        "#tag",
        "100%",
        "key=value",
        "user@host",
        "a:b",
        "naïve café",
        "日本語",
        "it's",
        '"quoted"',
        "",
        "x" * 4096,
        "a-b",
        "a--b",
    ],
)
def test_inert_arguments_pass_unchanged(arg: str) -> None:
    assert check_shell_arg(arg) == arg


@pytest.mark.parametrize(
    ("arg", "rule"),
    [
        ("a;b", "shell.metachar"),
        ("a&&b", "shell.metachar"),
        ("a|b", "shell.metachar"),
        ("`id`", "shell.metachar"),
        ("$(id)", "shell.metachar"),
        ("${HOME}", "shell.metachar"),
        ("<in", "shell.metachar"),
        (">out", "shell.metachar"),
        ("(sub)", "shell.metachar"),
        ("a\\b", "shell.metachar"),
        ("a\x00b", "shell.control"),
        ("a\nb", "shell.control"),
        ("a\rb", "shell.control"),
        ("a\tb", "shell.control"),
        ("a\x1bb", "shell.control"),
        ("a\u202eb", "shell.control"),
        ("a\u200bb", "shell.control"),
        ("a\u2028b", "shell.control"),
        ("ａ；ｂ", "shell.lookalike"),  # fullwidth semicolon
        ("ｘ｜ｙ", "shell.lookalike"),
        ("﹩HOME", "shell.lookalike"),  # small dollar sign
        ("＜x", "shell.lookalike"),
        ("-rf", "shell.option"),
        ("--output=/etc/passwd", "shell.option"),
        ("-", "shell.option"),
        ("－x", "shell.option"),  # fullwidth hyphen-minus
        ("x" * 4097, "shell.too_long"),
        ("é" * 2049, "shell.too_long"),
    ],
)
def test_dangerous_arguments_are_refused(arg: str, rule: str) -> None:
    with pytest.raises(SecurityViolation) as info:
        check_shell_arg(arg)
    assert info.value.rule == rule


def test_non_strings_are_refused() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_shell_arg(5)  # type: ignore[arg-type]
    assert info.value.rule == "shell.type"


@settings(deadline=None)  # timing on a shared machine is not the property
@given(st.text(alphabet=st.characters(categories=("L", "Nd", "Zs")), max_size=50))
def test_property_letters_digits_and_spaces_pass(arg: str) -> None:
    assert check_shell_arg(arg) == arg


@settings(deadline=None)
@given(st.text(alphabet=st.characters(categories=("N", "P", "S")), min_size=1, max_size=20))
def test_property_whatever_normalises_to_a_metacharacter_is_refused(arg: str) -> None:
    normalized = unicodedata.normalize("NFKC", arg)
    dangerous = any(ch in ";&|`$<>()\\" for ch in normalized) or normalized.startswith("-")
    if dangerous:
        with pytest.raises(SecurityViolation):
            check_shell_arg(arg)
    else:
        assert check_shell_arg(arg) == arg


def test_allowed_programs_pass() -> None:
    assert check_program("ls", ["ls", "wc"]) == "ls"
    assert check_program("python3.11", {"python3.11"}) == "python3.11"


@pytest.mark.parametrize("name", ["/bin/ls", "./ls", "../ls", "bin/ls", "-ls", "", "l s", "ls;"])
def test_programs_must_be_bare_names(name: str) -> None:
    with pytest.raises(SecurityViolation) as info:
        check_program(name, [name])
    assert info.value.rule == "shell.program_name"


def test_programs_must_be_allowlisted() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_program("rm", ["ls"])
    assert info.value.rule == "shell.program_not_allowed"
    assert "ls" in str(info.value)
    with pytest.raises(SecurityViolation, match="allowed_commands is empty"):
        check_program("ls", [])
    with pytest.raises(SecurityViolation):
        check_program("LS", ["ls"])
