"""tunegate: raw instruction data in, a promoted LoRA adapter out, with every step vouched for."""

__version__ = "0.1.0"
