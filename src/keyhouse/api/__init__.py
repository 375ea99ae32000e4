"""The HTTP surfaces: ``/v1`` (OpenAI's, through ``api/pipeline``) and ``/api`` (management)."""
