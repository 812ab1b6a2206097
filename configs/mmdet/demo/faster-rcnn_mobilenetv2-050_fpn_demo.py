# Demo-sized twin of ../faster-rcnn_mobilenetv2-100_fpn_1x_coco.py for the digits demo set: the ResNet18 demo's
# detector (thin FPN and heads, 10 classes, random init) on a static MobileNetV2 (0.5x) backbone.
_base_ = './faster-rcnn_r18_fpn_demo.py'

model = dict(
    backbone=dict(_delete_=True, type='StaticMobileNetV2', widen_factor=0.5, out_indices=(0, 1, 2, 3),
                  frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[16, 16, 48, 1280]))
