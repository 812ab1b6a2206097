# Mask R-CNN with FPN on the zoo's MobileNetV2 (1.0x) + KernelWarehouse (1x) backbone, as the released KW
# detector: tau 0, ImageNet weights from init_cfg.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../_base_/zoo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='KW_MobileNetV2',
        widen_factor=1.0, kw_ratio=1,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,  # also freezes the statistics of the KW attention's BatchNorm1d (see detection/backbones.py)
        # An ImageNet checkpoint of this backbone: this project's training checkpoint or the released one.
        # Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/kw_mobilenetv2_100_1x.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
