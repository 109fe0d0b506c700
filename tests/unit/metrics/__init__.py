"""Tests: unit/metrics."""
