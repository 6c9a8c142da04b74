"""SenNet + HOA kidney vessel segmentation: the shared code behind the notebooks.

Pipeline, one module per stage: paths -> data (+ rle, synthetic) -> metric -> transfer/training
-> inference -> postprocess -> submission.
"""
