"""vqtok: image tokenizers."""
