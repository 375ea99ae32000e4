"""Upstream deployments: any OpenAI-compatible server (OpenAI, DeepSeek, vLLM, Ollama …)."""
