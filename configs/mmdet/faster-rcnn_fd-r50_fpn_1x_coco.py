# Faster R-CNN, ResNet50 + FDConv backbone, FPN, 1x schedule (SGD, 12 epochs) on MS-COCO 2017: the released
# FDConv row (box AP 39.4, +3.6M parameters). The released config sets 8 images per GPU (its GPU count is not
# recorded) and gradient checkpointing (with_cp, memory only, not reproduced here).
_base_ = [
    './models/faster-rcnn_fd-r50_fpn.py',
    './_base_/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
train_dataloader = dict(batch_size=8, num_workers=8)
