# Mask R-CNN, MobileNetV2 (1.0x) + KernelWarehouse (4x) backbone, FPN on MS-COCO 2017 with the released KernelWarehouse
# AdamW 1x recipe (_base_/kw_coco_instance_adamw_1x.py).
_base_ = [
    './models/mask-rcnn_kw4x-mobilenetv2-100_fpn.py',
    './_base_/kw_coco_instance_adamw_1x.py',
]
