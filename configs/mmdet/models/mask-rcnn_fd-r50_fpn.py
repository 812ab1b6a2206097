# Mask R-CNN with FPN on the zoo's ResNet50 + FDConv backbone (every block conv with more than 16 channels and
# k in {1, 3}; stem and shortcuts static), as the released FDConv configs: kernel_num 64, param_ratio 1, the
# modulation of the frozen first stage still trained. FDConv starts from the *static* ImageNet weights.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../_base_/zoo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='FD_ResNet',
        depth=50, kernel_num=64,
        gate_init='released',  # the released initialisation; 'exact' starts as the static network
        fdconv_cfg=dict(use_fdconv_if_c_gt=16, use_fdconv_if_k_in=[1, 3], use_fbm_if_k_in=[3], param_ratio=1,
                        kernel_temp=1.0, temp=None, att_multi=2.0, ksm_local_act='sigmoid',
                        ksm_global_act='sigmoid', fbm_cfg=dict(k_list=[2, 4, 8], lowfreq_att=False)),
        need_grad_list=['KSM', 'FBM'],
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,  # also the BN of each FDConv's global modulation, as the released mmdet ResNet
        # A static ImageNet checkpoint of ResNet50 (converted to the Fourier domain on load) or the released
        # resnet50_Convert2FDConv.pth. Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/static_resnet50.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
