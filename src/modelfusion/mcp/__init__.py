"""`fusion mcp`: modelfusion as an MCP server, so an agent (Claude Code, Cursor, any MCP
client) can ask a panel instead of one model.

Two tools, both through the same code as the CLI: `fuse` (a prompt → `Fusion`, resolved by
plan.select/resolve like `fusion ask`) and `review` (a unified diff → the `review/`
pipeline of `fusion review`). `server.py` builds the server on the official MCP SDK
(`mcp`, the `modelfusion[mcp]` extra); `results.py` turns results into tool results. Only
`server.py` imports the SDK, and only `fusion mcp` imports `server.py`.
"""
