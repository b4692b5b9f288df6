"""The demo agent's tool: an MCP server (official SDK) that keeps notes in memory/notes.md.

metasup starts it before the agent, probes it with tools/list, restarts it if it dies, and
the agent reaches it with `metasup mcp connect notes`.
"""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import MCPServer

NOTES = Path(__file__).resolve().parents[1] / "memory" / "notes.md"
app = MCPServer("notes")


@app.tool()
def remember(text: str) -> str:
    """Append a line to the agent's notes."""
    NOTES.parent.mkdir(exist_ok=True)
    with NOTES.open("a") as f:
        f.write(f"- {text}\n")
    return f"noted ({NOTES.read_text().count(chr(10))} notes)"


@app.tool()
def recall() -> str:
    """Everything noted so far."""
    return NOTES.read_text() if NOTES.exists() else ""


if __name__ == "__main__":
    app.run()
