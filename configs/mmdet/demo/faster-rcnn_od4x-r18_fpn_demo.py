# Demo-sized twin of ../faster-rcnn_od4x-r50_fpn_1x_coco.py: the static twin's demo config (ResNet18, thin FPN and heads,
# 10 classes, random init) with the backbone turned into ResNet18 + ODConv (4x); everything else is shared.
_base_ = './faster-rcnn_r18_fpn_demo.py'

model = dict(backbone=dict(type='OD_ResNet', kernel_num=4, reduction=0.0625, attention_norm='layer'))

# Trained from scratch on batches of 4 images, the released attention BatchNorm normalises each attention's
# squeezed vector over 4 samples and meets test-time inputs far outside its running statistics: the attention
# branch uses a per-sample norm instead (attention_norm='layer', as the classification demo), and the attentions
# start flat and sharpen as in the classification recipe (temperature 30 annealed to 1 over the first half of the
# schedule). Box AP over seeds 0-2 for each choice: docs/detection.md. The COCO configs fine-tune released
# ImageNet backbones and keep the released norm (frozen by norm_eval).
custom_hooks = [dict(type='ODConvTemperatureHook', init=30.0, epochs=2)]
