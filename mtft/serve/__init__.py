"""mtft-serve: an OpenAI-compatible HTTP server over the same loading and generation as mtft-eval and mtft-generate
(training/inference.py), for every model mtft trains, mixtures of LoRA experts included."""
