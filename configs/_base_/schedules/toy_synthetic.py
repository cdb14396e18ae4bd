# Runtime of the CPU toy configs on the synthetic shapes data set
# (python tools/generate_synthetic_coco.py): iteration-based training with
# AdamW and gradient clipping, a linear warm-up, one lr step near the end, a
# validation (COCO mAP) and a checkpoint at the end.
#
# 500 iterations by default (the toy DETRs). A toy that trains for another
# number of iterations sets `max_iters` and restates the three entries that
# depend on it (mmengine configs do not re-evaluate a base's expressions):
#   train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
#   param_scheduler[1]: end=max_iters, milestones=[int(max_iters * 0.8)]
#   default_hooks = dict(checkpoint=dict(interval=max_iters))
_base_ = [
    '../datasets/synthetic_coco_detection.py',
    '../default_runtime_lors.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

# iteration-based: one endless pass over the data instead of a data loader
# (and its worker processes) restarted every epoch
train_dataloader = dict(sampler=dict(type='InfiniteSampler', shuffle=True))

max_iters = 500
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0001),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='AtomicCheckpointHook', interval=max_iters, by_epoch=False))
log_processor = dict(by_epoch=False)
# The images are 128 px: tools/test.py --show-dir draws them 4x enlarged, with labels
# that do not cover each other (lors_mmdet.engine.ReadableDetVisualizer).
visualizer = dict(type='ReadableDetVisualizer', scale=4)
randomness = dict(seed=0)
