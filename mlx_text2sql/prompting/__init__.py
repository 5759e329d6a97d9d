"""Prompt building beyond the chat messages themselves: schema selection for multi-table
databases (:mod:`.selection`). Pure Python; no MLX import."""
