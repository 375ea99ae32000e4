"""The bundled local models: a GGUF chat model on llama.cpp and a multilingual embedding model."""
