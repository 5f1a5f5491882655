"""Training, evaluation and inspection of CLIP models, and the shapes-domain renderer (no torch at import)."""
