"""Test doubles that need no root: a runtime with no isolation, a tiny image."""
