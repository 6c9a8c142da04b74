"""What runs and stands in for the pipeline, outside the shipped `lib/` (never imported by it; tests/test_layout.py).

Stand-ins: `synthetic` (competition-layout kidneys with procedural vessel trees), `v1_checkpoint` (nnU-Net v1 archives
with random weights). Run tooling: `pipeline` (notebooks 01 -> 02 -> 03 with papermill), `kaggle` (the upload bundle),
`explore` (the explorer launcher), `budget` (the training and hidden-test plans from the command line), `infer`
(notebook 03 without the figures, from a script). Installed by `make setup` as its own distribution
(tools/pyproject.toml), so the Kaggle wheel of `lib` is built from the project as it is.
"""
