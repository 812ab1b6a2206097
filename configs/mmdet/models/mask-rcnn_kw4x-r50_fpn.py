# Mask R-CNN with FPN on the zoo's ResNet50 + KernelWarehouse (4x) backbone, as the released KW detector: tau 0,
# drop path 0.1 (the released backbone's default, which its configs keep), ImageNet weights from init_cfg.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../_base_/zoo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='KW_ResNet',
        depth=50, kw_ratio=4,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,  # also freezes the statistics of the KW attention's BatchNorm1d (see detection/backbones.py)
        # An ImageNet checkpoint of this backbone: this project's training checkpoint or the released one.
        # Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/kw_resnet50_4x.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
