"""Stand-ins and development tooling (synthetic competition data, v1-format archives with random weights).

Never shipped to Kaggle and never imported by a pipeline stage (tests/test_layout.py)."""
