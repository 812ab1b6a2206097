# Demo-sized twin of ../mask-rcnn_od4x-r50_fpn_1x_coco.py: the static twin's demo config (ResNet18, thin FPN and heads,
# 10 classes, random init) with the backbone turned into ResNet18 + ODConv (4x); everything else is shared.
_base_ = './mask-rcnn_r18_fpn_demo.py'

# The attention-branch BNs keep their initial statistics (an affine map): over 4 pooled vectors of look-alike
# images their batch statistics are meaningless and the running ones land the test-time attentions hundreds of
# standard deviations off (see detection/backbones.py). The feature BNs train, as in the static twin.
model = dict(backbone=dict(type='OD_ResNet', kernel_num=4, reduction=0.0625, attention_norm_eval=True))
