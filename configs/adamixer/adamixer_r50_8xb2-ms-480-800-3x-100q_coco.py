# AdaMixer, R-50, 100 queries, 3x schedule with multi-scale training
# (shorter side 480-800, no crop). Checked against the authors' config
# MCG-NJU/AdaMixer configs/adamixer/adamixer_r50_mstrain_480-800_3x_coco.py:
# the 1x model and optimiser, Resize to one of (1333, 480..800 step 32) with
# the aspect ratio kept, flip 0.5; 36 epochs, lr x0.1 after epochs 27 and 33
# (not 24: this schedule differs from the crop configs'); warmup as 1x.
_base_ = './adamixer_r50_8xb2-1x-100q_coco.py'

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomChoiceResize',
        scales=[(1333, 480), (1333, 512), (1333, 544), (1333, 576),
                (1333, 608), (1333, 640), (1333, 672), (1333, 704),
                (1333, 736), (1333, 768), (1333, 800)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]
