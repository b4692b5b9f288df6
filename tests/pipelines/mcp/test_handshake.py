"""Which clients share an MCP server process: those whose handshakes a server cannot tell apart."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from metasup.pipelines.mcp.worker.servers import handshake_key

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_any_params_give_a_key_and_never_raise(params: Any) -> None:
    import copy

    key = handshake_key(params)
    json.loads(key)  # a JSON text: it is compared, logged and shown as it is
    assert key == handshake_key(copy.deepcopy(params))


def test_the_version_and_the_capabilities_decide_the_client_name_does_not() -> None:
    base = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}, "roots": {}}}
    same = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"roots": {}, "sampling": {}},  # another order
        "clientInfo": {"name": "another client", "version": "9"},
    }
    assert handshake_key(base) == handshake_key(same)
    assert handshake_key(base) != handshake_key({**base, "protocolVersion": "2025-06-18"})
    assert handshake_key(base) != handshake_key({**base, "capabilities": {"sampling": {}}})
