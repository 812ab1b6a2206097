# Demo-sized KernelWarehouse twin beside the static and ODConv twins (the released KW detectors are Mask R-CNN:
# ../mask-rcnn_kw1x-r50_fpn_1x_coco_adamw.py): the static twin's demo config (ResNet18, thin FPN and heads,
# 10 classes, random init, SGD) with the backbone turned into ResNet18 + KernelWarehouse (1x: about the static
# twin's parameters, 11.93M against 11.69M as ImageNet classifiers); the rest is shared.
_base_ = './faster-rcnn_r18_fpn_demo.py'

model = dict(backbone=dict(type='KW_ResNet', kw_ratio=1, attention_norm='layer'))

# Trained from scratch on batches of 4 images, as the ODConv twin: the attention's norm is per sample
# (attention_norm='layer', LayerNorm, as the released ConvNeXt; the released BatchNorm1d would normalise each
# pooled vector over 4 images), and tau, the weight of the fixed initial cell assignment, falls from 1 to 0 over
# the first epoch as in the released classification recipe (which trains from scratch). The COCO configs
# fine-tune released ImageNet backbones at tau 0 with the released norm (frozen by norm_eval).
custom_hooks = [dict(type='KWTauHook', epochs=1)]
