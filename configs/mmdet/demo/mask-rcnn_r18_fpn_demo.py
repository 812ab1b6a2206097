# Demo-sized twin of ../mask-rcnn_r50_fpn_1x_coco.py for the digits demo set: static ResNet18 backbone,
# trained from random init (no ImageNet weights here, so BN statistics train too), thin FPN and heads, 10 classes.
_base_ = ['../models/mask-rcnn_r50_fpn.py', './_base_/demo_instance.py']

model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64, anchor_generator=dict(scales=[4])),  # digits are 10-21 px
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=10),
    ),
    # Fewer proposals and RoIs than COCO's 2000/512: a handful of digits per image, and a CPU.
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
