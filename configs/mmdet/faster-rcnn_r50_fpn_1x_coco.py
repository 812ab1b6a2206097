# Faster R-CNN, static ResNet50 backbone, FPN, 1x schedule (12 epochs, batch 16 = 8 GPUs x 2) on MS-COCO 2017.
_base_ = [
    './models/faster-rcnn_r50_fpn.py',
    './_base_/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
