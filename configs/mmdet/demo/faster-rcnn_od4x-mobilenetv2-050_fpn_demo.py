# Demo-sized twin of ../faster-rcnn_od4x-mobilenetv2-100_fpn_1x_coco.py: the static twin's demo config (MobileNetV2 0.5x,
# thin FPN and heads, 10 classes, random init) with the backbone turned into MobileNetV2 + ODConv (4x).
_base_ = './faster-rcnn_mobilenetv2-050_fpn_demo.py'

model = dict(backbone=dict(type='OD_MobileNetV2', kernel_num=4, reduction=0.0625))

# Trained from scratch, the attentions start flat and sharpen as in the classification recipe: temperature 30
# annealed to 1 over the first half of the schedule. At temperature 1 from the first step (as before) the
# attention-branch BNs drift so far that test-time attentions differ from every training-time one (see
# detection/backbones.py and detection/hooks.py).
custom_hooks = [dict(type='ODConvTemperatureHook', init=30.0, epochs=2)]
