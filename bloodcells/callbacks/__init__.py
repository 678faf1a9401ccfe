"""Callbacks that know about the fine-tuning stages."""
