# Demo-sized twin of ../mask-rcnn_od4x-mobilenetv2-100_fpn_1x_coco.py: the static twin's demo config (MobileNetV2 0.5x,
# thin FPN and heads, 10 classes, random init) with the backbone turned into MobileNetV2 + ODConv (4x).
_base_ = './mask-rcnn_mobilenetv2-050_fpn_demo.py'

# The attention-branch BNs keep their initial statistics (an affine map): over 4 pooled vectors of look-alike
# images their batch statistics are meaningless and the running ones land the test-time attentions hundreds of
# standard deviations off (see detection/backbones.py). The feature BNs train, as in the static twin.
model = dict(backbone=dict(type='OD_MobileNetV2', kernel_num=4, reduction=0.0625, attention_norm_eval=True))
