"""Evaluation: `python -m reidfast.eval` (CLI), saved-feature files (io), re-ranking (rerank), report tables.

Ranking itself is `reidfast.ops.rank_eval`."""
