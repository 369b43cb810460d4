"""selfexplain: label SAE features by asking the model itself (self-explanation).

The core package is plain PyTorch + transformers (+ sae-lens, imported lazily). It never imports
Prefect, `tasks/`, `flows/`, `cli/` or `bench/`: the folders at the repository root wrap it
(`cli/` above `flows/` above `tasks/`), and `tests/unit/test_layers.py` holds it to that.
"""

__version__ = "0.1.0"
