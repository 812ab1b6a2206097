# Mask R-CNN with FPN on the zoo's MobileNetV2 (1.0x) + KernelWarehouse (4x) backbone: the 1x model with kw_ratio 4
# and the 4x ImageNet checkpoint (override with --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = ['./mask-rcnn_kw1x-mobilenetv2-100_fpn.py']

model = dict(backbone=dict(kw_ratio=4, init_cfg=dict(checkpoint='checkpoints/kw_mobilenetv2_100_4x.pth')))
