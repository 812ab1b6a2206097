# Demo-sized twin of ../faster-rcnn_od4x-r50_fpn_1x_coco.py: the static twin's demo config (ResNet18, thin FPN and heads,
# 10 classes, random init) with the backbone turned into ResNet18 + ODConv (4x); everything else is shared.
_base_ = './faster-rcnn_r18_fpn_demo.py'

model = dict(backbone=dict(type='OD_ResNet', kernel_num=4, reduction=0.0625))

# Trained from scratch, the attentions start flat and sharpen as in the classification recipe: temperature 30
# annealed to 1 over the first half of the schedule. At temperature 1 from the first step (as before) the
# attention-branch BNs drift so far that test-time attentions differ from every training-time one (see
# detection/backbones.py and detection/hooks.py).
custom_hooks = [dict(type='ODConvTemperatureHook', init=30.0, epochs=2)]
