# AdaMixer (Gao et al., CVPR 2022), R-50, 100 queries, 1x schedule.
# Published COCO val box AP of the authors' release: 42.7.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime_lors.py', '../_base_/models/adamixer_r50.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

# 8 GPUs x 2 images; AdamW, grad clip 1.0
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.000025, weight_decay=0.0001),
    clip_grad=dict(max_norm=1.0, norm_type=2))

# 12 epochs, lr x0.1 after epochs 8 and 11, 500 iterations linear warmup
# (all inherited from schedule_1x: kept explicit here for reading)
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=1)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=16)
