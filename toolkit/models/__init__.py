"""Model loading (HF folder, GGUF, the embedded default), the elastic Llama class, tiny test builders."""

from toolkit.models.loading import LoadedModel, load_model, resolve_source

__all__ = ["LoadedModel", "load_model", "resolve_source"]
