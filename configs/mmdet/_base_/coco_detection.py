# MS-COCO 2017 as in mmdet's base (data/coco/), evaluated with the standard 12 COCO numbers.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

val_evaluator = dict(type='StandardCocoMetric', metric='bbox')
test_evaluator = val_evaluator
