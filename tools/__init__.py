"""What runs and stands in for the pipeline, outside the shipped `lib/` (never imported by it; tests/test_layout.py).

Stand-ins: `synthetic` (competition-layout kidneys with procedural vessel trees), `v1_checkpoint` (nnU-Net v1 archives
with random weights). Run tooling: `pipeline` (notebooks 01 -> 02 -> 03 with papermill), `kaggle` (the upload bundle),
`explore` (the explorer launcher), `infer` (notebook 03 without the figures, from a script); command lines `budget`
(training and hidden-test plans), `convert_v1` (v1 -> v2) and `metric` (a submission's score). Installed by
`make setup` as its own distribution (tools/pyproject.toml), so the Kaggle wheel of `lib` is built from the project
as it is.
"""
