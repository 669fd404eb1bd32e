"""Models on disk: names, manifests and blobs (Ollama's layout), loose GGUFs, and what can be pulled."""
