# Demo-sized twin of ../mask-rcnn_od4x-mobilenetv2-100_fpn_1x_coco.py: the static twin's demo config (MobileNetV2 0.5x,
# thin FPN and heads, 10 classes, random init) with the backbone turned into MobileNetV2 + ODConv (4x).
_base_ = './mask-rcnn_mobilenetv2-050_fpn_demo.py'

model = dict(backbone=dict(type='OD_MobileNetV2', kernel_num=4, reduction=0.0625, attention_norm='layer'))

# Trained from scratch on batches of 4 images, the released attention BatchNorm normalises each attention's
# squeezed vector over 4 samples and meets test-time inputs far outside its running statistics: the attention
# branch uses a per-sample norm instead (attention_norm='layer', as the classification demo), and the attentions
# start flat and sharpen as in the classification recipe (temperature 30 annealed to 1 over the first half of the
# schedule). Box AP over seeds 0-2 for each choice: docs/detection.md. The COCO configs fine-tune released
# ImageNet backbones and keep the released norm (frozen by norm_eval).
custom_hooks = [dict(type='ODConvTemperatureHook', init=30.0, epochs=2)]
