"""`${VAR}` expansion in MCP entries: as the shell and MCP clients read it, nothing more."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasup.facts.envvars import UnsetVariable, expand

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
values = st.text(st.characters(blacklist_characters="}", blacklist_categories=("Cs",)), max_size=8)
plain = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(
    lambda t: "${" not in t
)


@given(plain, st.dictionaries(names, values))
def test_text_without_a_reference_is_left_alone(text: str, environ: dict[str, str]) -> None:
    assert expand(text, environ) == text


@given(st.lists(st.tuples(plain, names, st.none() | values)), st.dictionaries(names, values))
def test_each_reference_is_its_value_or_its_default(
    parts: list[tuple[str, str, str | None]], environ: dict[str, str]
) -> None:
    text = "".join(
        before + ("${" + n + "}" if d is None else "${" + n + ":-" + d + "}")
        for before, n, d in parts
    )
    expected = ""
    for before, n, d in parts:
        if d is None and n not in environ:
            with pytest.raises(UnsetVariable) as e:
                expand(text, environ)
            assert e.value.name in {p[1] for p in parts if p[2] is None}
            return
        expected += before + (environ[n] if d is None else (environ.get(n) or d))
    # A plain part ending in "$" next to a reference is text, then the reference: both kept.
    assert expand(text, environ) == expected


def test_the_shell_forms_metasup_does_not_expand_stay_as_written() -> None:
    env = {"A": "x"}
    assert expand("$A ${A} $(whoami) ${A:=y} ${1}", env) == "$A x $(whoami) ${A:=y} ${1}"
    assert expand("${A:-}", {}) == ""
