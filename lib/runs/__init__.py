"""Runs: the papermill pipeline over notebooks 01 -> 02 -> 03 and the Kaggle upload bundle."""
