"""The URL path of a Functions HTTP route, for the benchmark's worker front (both dispatches)."""

from __future__ import annotations


def literal_path(prefix: str, template: str) -> str | None:
    """`/{routePrefix}/{route}`, or None for templated routes (`{name}`), which the load never requests."""
    if "{" in template:
        return None
    return "/" + "/".join(part for part in (prefix.strip("/"), template.strip("/")) if part)
