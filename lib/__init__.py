"""SenNet + HOA kidney vessel segmentation: the shared code behind the notebooks. Its rooms follow the pipeline and
imports only go down it (docs/design.md, tests/test_layout.py)."""
