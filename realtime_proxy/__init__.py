"""Middle tier between browsers and Azure OpenAI gpt-realtime: mints ephemeral secrets and brokers SDP offers."""
