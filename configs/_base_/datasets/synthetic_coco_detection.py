# The embedded synthetic shapes data set, in COCO format. Generate it first:
#   python tools/generate_synthetic_coco.py     # -> data/synthetic_coco/
# Layout: data/synthetic_coco/{train,val}/*.png and
#         data/synthetic_coco/annotations/instances_{train,val}.json
# Square images of img_size pixels (128 by default); the pipeline keeps that
# fixed scale (no multi-scale training: the images are already tiny).
dataset_type = 'CocoDataset'
data_root = 'data/synthetic_coco/'
img_scale = (128, 128)

# Same names, same order as lors_mmdet.datasets.synthetic.CLASSES (a config
# cannot import the package; tests/test_data_synthetic.py keeps them equal).
metainfo = dict(classes=('circle', 'rectangle', 'triangle', 'star', 'cross',
                         'ring'),
                palette=[(220, 20, 60), (0, 130, 255), (255, 170, 0),
                         (150, 0, 220), (0, 190, 90), (255, 255, 255)])

backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(batch_size=8,
                        num_workers=2,
                        persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(
                            type=dataset_type,
                            data_root=data_root,
                            metainfo=metainfo,
                            ann_file='annotations/instances_train.json',
                            data_prefix=dict(img='train/'),
                            filter_cfg=dict(filter_empty_gt=True),
                            pipeline=train_pipeline,
                            backend_args=backend_args))
val_dataloader = dict(batch_size=8,
                      num_workers=2,
                      persistent_workers=False,
                      drop_last=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type=dataset_type,
                                   data_root=data_root,
                                   metainfo=metainfo,
                                   ann_file='annotations/instances_val.json',
                                   data_prefix=dict(img='val/'),
                                   test_mode=True,
                                   pipeline=test_pipeline,
                                   backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(type='CocoMetric',
                     ann_file=data_root + 'annotations/instances_val.json',
                     metric='bbox',
                     format_only=False,
                     backend_args=backend_args)
test_evaluator = val_evaluator
