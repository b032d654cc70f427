"""What time it is somewhere: the smallest useful tool."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from realtime_proxy.toolkit import ToolError, tool


@tool
async def get_current_time(timezone: str) -> dict[str, str]:
    """The current local date and time in a time zone, with its UTC offset.

    Args:
        timezone: An IANA time zone name, such as Europe/Paris, Asia/Tokyo or America/New_York.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # a path-like, malformed or overlong key
        raise ToolError("Unknown time zone: use an IANA name such as Europe/Paris.") from None
    now = datetime.now(zone)
    return {"timezone": timezone, "time": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}
