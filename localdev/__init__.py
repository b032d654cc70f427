"""Running and checking the app on one machine, without Azure: local stand-ins for its Azure services (the Functions
host, Azure OpenAI's realtime peer, Table Storage), and the developer commands that need no bash: `python -m
localdev` (run), `localdev.lint` (static checks) and `localdev.smoke` (one real call against any deployment)."""
