"""Tests: unit/runtime."""
