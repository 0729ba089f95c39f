"""mtft: multi-task LLM fine-tuning."""

__version__ = "0.1.0"


def load_adapter(model, path):
    """Restore a saved adapter (any method) onto a freshly loaded base model."""
    from mtft.adapters import load_adapter as _load

    return _load(model, path)
