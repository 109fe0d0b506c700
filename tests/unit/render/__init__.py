"""Tests: unit/render."""
