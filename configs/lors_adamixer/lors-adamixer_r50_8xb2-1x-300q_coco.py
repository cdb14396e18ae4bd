# LORS-AdaMixer, R-50, 300 queries (really 300: the authors' config of this
# name builds 100), 1x schedule.
_base_ = './lors-adamixer_r50_8xb2-1x-100q_coco.py'

num_query = 300
model = dict(
    rpn_head=dict(num_query=num_query),
    test_cfg=dict(rcnn=dict(max_per_img=num_query)))
