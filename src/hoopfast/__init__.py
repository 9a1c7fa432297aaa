"""hoopfast: a layer-7 access gateway for databases."""

__version__ = "0.1.0"
