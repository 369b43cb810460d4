"""selfexplain: label SAE features by asking the model itself (self-explanation).

The core package is plain PyTorch + transformers (+ sae-lens, imported lazily). It never imports
Prefect: the `tasks/` and `flows/` folders at the repository root wrap it.
"""

__version__ = "0.1.0"
