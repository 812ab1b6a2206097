# Mask R-CNN with FPN on the zoo's ResNet50 + KernelWarehouse (4x) backbone: the 1x model with kw_ratio 4 and the
# 4x ImageNet checkpoint (override with --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = ['./mask-rcnn_kw1x-r50_fpn.py']

model = dict(backbone=dict(kw_ratio=4, init_cfg=dict(checkpoint='checkpoints/kw_resnet50_4x.pth')))
