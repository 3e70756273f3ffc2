"""Request and response bodies, shaped like OpenAI's; our additions are extra fields only."""
