"""Tests: unit/commands."""
