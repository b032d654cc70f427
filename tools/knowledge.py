"""Answers from the owner's documents: the Markdown and text files in `knowledge/`, or an Azure AI Search index."""

from __future__ import annotations

from pathlib import Path

from realtime_proxy.knowledge import AzureKnowledge, LocalKnowledge
from realtime_proxy.toolkit import ToolContext, ToolError, tool

FOLDER = Path(__file__).resolve().parent.parent / "knowledge"
LOCAL = LocalKnowledge(FOLDER)


@tool
async def search_knowledge(query: str, context: ToolContext) -> dict[str, object]:
    """Search this app's documentation (deploying, settings, limits, troubleshooting) and return matching passages.

    Args:
        query: A few keywords, such as "deploy azure" or "session length limit".
    """
    settings = context.settings
    if settings.search_endpoint and settings.search_index:
        if context.credential is None:
            raise ToolError("The document search is not available right now.")
        hits = await AzureKnowledge(settings.search_endpoint, settings.search_index, context.credential).search(query)
    else:
        hits = await LOCAL.search(query)
    return {"hits": hits}
