# Mask R-CNN, MobileNetV2 (1.0x) + ODConv (4x) backbone, FPN, 1x schedule (12 epochs, batch 16 = 8 GPUs x 2) on MS-COCO 2017.
_base_ = [
    './models/mask-rcnn_od4x-mobilenetv2-100_fpn.py',
    './_base_/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
