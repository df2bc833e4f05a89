"""Packaged description prompts (the repository's prompts/ folder); see salip.core.prompts."""
