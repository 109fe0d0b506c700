"""Inputs → the frozen, typed model: one loader per dialect (`sources/`), addresses, policy
rules and located problems. Reads inputs; writes nothing."""
