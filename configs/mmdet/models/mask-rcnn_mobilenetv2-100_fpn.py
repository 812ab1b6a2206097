# Mask R-CNN with FPN on the zoo's static MobileNetV2 (1.0x) backbone; temperature 1, ImageNet weights from init_cfg.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../_base_/zoo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='StaticMobileNetV2',
        widen_factor=1.0,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        # An ImageNet checkpoint of this backbone: this project's training checkpoint or the released one.
        # Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/static_mobilenetv2_100.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
