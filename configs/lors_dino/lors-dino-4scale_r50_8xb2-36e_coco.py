# LORS DINO-4scale R-50, 36 epochs (the schedule of mmdet's 36e config).
_base_ = './lors-dino-4scale_r50_8xb2-12e_coco.py'
max_epochs = 36
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[30],
        gamma=0.1)
]
