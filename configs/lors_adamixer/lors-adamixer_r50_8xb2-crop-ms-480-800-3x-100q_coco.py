# LORS-AdaMixer, R-50, 100 queries, 3x schedule with crop + multi-scale.
_base_ = './lors-adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py'

num_query = 100
model = dict(
    rpn_head=dict(num_query=num_query),
    test_cfg=dict(rcnn=dict(max_per_img=num_query)))
