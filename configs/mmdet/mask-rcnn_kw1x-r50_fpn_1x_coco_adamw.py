# Mask R-CNN, ResNet50 + KernelWarehouse (1x) backbone, FPN on MS-COCO 2017 with the released KernelWarehouse
# AdamW 1x recipe (_base_/kw_coco_instance_adamw_1x.py).
_base_ = [
    './models/mask-rcnn_kw1x-r50_fpn.py',
    './_base_/kw_coco_instance_adamw_1x.py',
]
