"""Hypothesis strategies shared by the CRDT property tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st


def texts(max_size: int) -> st.SearchStrategy[str]:
    """Strings that include lone surrogates: JSON's "\\ud800" escape decodes to one (issue
    6), and canonical_json (the LWW tie-break) must order them like any other string.
    st.text never draws surrogates, whatever its alphabet, hence a list of characters.
    Each string is what JSON gives back for it: a high+low pair of escapes decodes to one
    astral character, so a str holding such a pair never arrives from a value."""
    chars = st.characters() | st.characters(categories=["Cs"])
    return st.lists(chars, max_size=max_size).map(lambda cs: json.loads(json.dumps("".join(cs))))
