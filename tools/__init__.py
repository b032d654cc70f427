"""The owner's tools: async functions the assistant can call, run by this app during a call (docs/tools.md).

Each module here registers its tools with `@tool` when imported; add yours and import it below.
`REALTIME_TOOLS` picks which registered tools a session gets (default: all of them).
"""

from . import clock, knowledge

__all__ = ["clock", "knowledge"]
