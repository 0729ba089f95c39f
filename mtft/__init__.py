"""mtft: multi-task LLM fine-tuning."""

__version__ = "0.1.0"


def load_adapter(model, path):
    """Restore a saved adapter (any method) onto a freshly loaded base model, its runtime attached: call
    `mtft.runtime_of(model).before_generate({"input_ids": ..., "attention_mask": ...})` before generating."""
    from mtft.adapters import load_adapter as _load

    return _load(model, path)


def runtime_of(model):
    """The adapter runtime a model loaded by `load_adapter` (or trained by mtft) carries."""
    from mtft.adapters import runtime_of as _runtime_of

    return _runtime_of(model)
