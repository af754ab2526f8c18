"""cxrclf: leakage-free classification of posteroanterior chest X-rays."""

__version__ = "0.1.0"
