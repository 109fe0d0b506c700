"""Tests: unit/config."""
