"""SenNet + HOA kidney vessel segmentation: the shared code behind the notebooks.

One room per pipeline stage, imports only going down (tests/test_layout.py):
paths, cli -> data (data, rle, volume) -> metric -> model -> training | inference -> postprocess -> submission
-> plan -> infer -> explore -> dev (stand-ins) -> notebook -> runs (pipeline, Kaggle bundle).
"""
