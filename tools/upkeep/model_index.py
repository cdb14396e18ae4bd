"""OpenMMLab model index of this repository: ``configs/<family>/metafile.yml`` and
``model-index.yml``, in the format that mim and mmengine's inferencers parse.

Every entry is derived, never typed: the parameter counts from a parameter report
of the built model (``tools/analysis/param_report.py``), epochs / iterations and the
training data from the config, reference COCO results from :data:`REFERENCE_RESULTS`
(numbers published by the authors, with their source) or from mmdet's own installed
metafiles (the stock counterpart of a LORS config). None of the COCO numbers was
trained here; each entry that carries one says so and names its source.

    python tools/analysis/model_index.py           # (re)write the files
    python tools/analysis/model_index.py --check   # fail if they are stale
"""
import glob
import os.path as osp
import re
from typing import Callable, Dict, List, Optional

import yaml

HEADER = ('# Written by tools/analysis/model_index.py from the configs and their parameter\n'
          '# reports: do not edit by hand, rerun the tool.\n')
NOT_TRAINED_HERE = 'reference, not trained here'
LORS_PAPER = dict(URL='https://arxiv.org/abs/2403.04303',
                  Title='LORS: Low-rank Residual Structure for Parameter-Efficient '
                  'Network Stacking')

MMDET_CODE = 'https://github.com/open-mmlab/mmdetection/blob/v3.3.0/'
# One collection per config family (folder of configs/).
COLLECTIONS: Dict[str, dict] = {
    'adamixer': dict(
        Name='AdaMixer', Architecture=['ResNet', 'Swin Transformer', 'AdaMixer decoder'],
        Paper=dict(URL='https://arxiv.org/abs/2203.16507',
                   Title='AdaMixer: A Fast-Converging Query-Based Object Detector'),
        README='docs/adamixer.md', Code='lors_mmdet/models/adamixer'),
    'lors_adamixer': dict(
        Name='LORS-AdaMixer', Architecture=['ResNet', 'Swin Transformer', 'AdaMixer decoder',
                                            'LORS'],
        Paper=LORS_PAPER, README='docs/adamixer.md', Code='lors_mmdet/models/adamixer'),
    'dino': dict(
        Name='DINO (toy)', Architecture=['ResNet', 'Transformer'],
        Paper=dict(URL='https://arxiv.org/abs/2203.03605',
                   Title='DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End '
                   'Object Detection'),
        README='docs/detr.md', Code=MMDET_CODE + 'mmdet/models/detectors/dino.py'),
    'lors_dino': dict(
        Name='LORS-DINO', Architecture=['ResNet', 'Transformer', 'LORS'], Paper=LORS_PAPER,
        README='docs/detr.md', Code='lors_mmdet/models/detr'),
    'deformable_detr': dict(
        Name='Deformable DETR (toy)', Architecture=['ResNet', 'Transformer'],
        Paper=dict(URL='https://arxiv.org/abs/2010.04159',
                   Title='Deformable DETR: Deformable Transformers for End-to-End Object '
                   'Detection'),
        README='docs/detr.md', Code=MMDET_CODE + 'mmdet/models/detectors/deformable_detr.py'),
    'lors_deformable_detr': dict(
        Name='LORS-Deformable-DETR', Architecture=['ResNet', 'Transformer', 'LORS'],
        Paper=LORS_PAPER, README='docs/detr.md', Code='lors_mmdet/models/detr'),
    **{family: dict(Name=name, Architecture=['ResNet', 'Transformer', 'LORS'],
                    Paper=LORS_PAPER, README='docs/detr.md', Code='lors_mmdet/models/detr')
       for family, name in (('lors_detr', 'LORS-DETR'),
                            ('lors_conditional_detr', 'LORS-Conditional-DETR'),
                            ('lors_dab_detr', 'LORS-DAB-DETR'),
                            ('lors_ddq_detr', 'LORS-DDQ-DETR'))},
    'sparse_rcnn': dict(
        Name='Sparse R-CNN (toy)', Architecture=['ResNet', 'FPN', 'Sparse R-CNN stages'],
        Paper=dict(URL='https://arxiv.org/abs/2011.12450',
                   Title='Sparse R-CNN: End-to-End Object Detection with Learnable '
                   'Proposals'),
        README='docs/sparse_rcnn.md',
        Code=MMDET_CODE + 'mmdet/models/detectors/sparse_rcnn.py'),
    'lors_sparse_rcnn': dict(
        Name='LORS-Sparse-R-CNN', Architecture=['ResNet', 'Sparse R-CNN stages', 'LORS'],
        Paper=LORS_PAPER, README='docs/sparse_rcnn.md', Code='lors_mmdet/models/sparse_rcnn.py'),
    'lors_queryinst': dict(
        Name='LORS-QueryInst', Architecture=['ResNet', 'QueryInst stages', 'LORS'],
        Paper=LORS_PAPER, README='docs/sparse_rcnn.md', Code='lors_mmdet/models/sparse_rcnn.py'),
}

ADAMIXER_README = 'https://github.com/MCG-NJU/AdaMixer'
# COCO val2017 box AP published for configs of this repository (AdaMixer on mmdet 2.12).
REFERENCE_RESULTS: Dict[str, dict] = {
    'adamixer_r50_8xb2-1x-100q_coco': dict(
        box_ap=42.7, source=f'AdaMixer paper (CVPR 2022), as noted in {ADAMIXER_README}'),
    'adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco': dict(
        box_ap=47.0, source=f'{ADAMIXER_README} (Main Results, R50, APval)'),
    'adamixer_r101_8xb2-crop-ms-480-800-3x-300q_coco': dict(
        box_ap=48.0, source=f'{ADAMIXER_README} (Main Results, R101, APval)'),
    'adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco': dict(
        box_ap=51.3, source=f'{ADAMIXER_README} (Main Results, Swin-S, APval)'),
}

ParameterReport = Callable[[str], dict]  # config path -> param_report.py's report dict


def family_configs(root: str, family: str) -> List[str]:
    """Config files of ``configs/<family>/``, relative to ``root``, sorted."""
    paths = glob.glob(osp.join(root, 'configs', family, '*.py'))
    return sorted(osp.relpath(path, root) for path in paths)


def mmdet_results() -> Dict[str, dict]:
    """``{model name: {'box AP': ..., 'metafile': ...}}`` of mmdet's installed metafiles."""
    import mmdet
    mim = osp.join(osp.dirname(mmdet.__file__), '.mim')
    results = {}
    for path in sorted(glob.glob(osp.join(mim, 'configs', '*', 'metafile.yml'))):
        with open(path) as f:
            content = yaml.safe_load(f) or {}
        # a few of mmdet's metafiles are a bare list of models
        models = content if isinstance(content, list) else content.get('Models') or []
        for model in models:
            for result in model.get('Results') or []:
                box_ap = (result.get('Metrics') or {}).get('box AP')
                if result.get('Dataset') == 'COCO' and box_ap is not None:
                    results[model['Name'].strip()] = {
                        'box AP': box_ap, 'metafile': osp.relpath(path, mim)}
    return results


def _batch_size(name: str) -> Optional[int]:
    match = re.search(r'_(\d+)xb(\d+)', name)
    return int(match.group(1)) * int(match.group(2)) if match else None


def model_entry(root: str, config: str, collection: str, report: dict,
                stock_results: Dict[str, dict]) -> dict:
    """The metafile entry of one config.

    Args:
        root: Repository root.
        config: Config path relative to ``root``.
        collection: Name of the config's collection.
        report: The config's parameter report (``param_report.py --json``).
        stock_results: :func:`mmdet_results`.
    """
    from lors_mmdet.apis import load_config
    cfg = load_config(osp.join(root, config))
    name = osp.splitext(osp.basename(config))[0]
    data_root = cfg.train_dataloader.dataset.get('data_root', '')
    metadata = {'Training Data': 'synthetic shapes (tools/generate_synthetic_coco.py)'
                if 'synthetic' in data_root else 'COCO'}
    loop = cfg.train_cfg
    if 'max_epochs' in loop:
        metadata['Epochs'] = loop.max_epochs
    else:
        metadata['Iterations'] = loop.max_iters
    if _batch_size(name):
        metadata['Batch Size'] = _batch_size(name)
    decoder = report['decoder']
    metadata['Parameters'] = report['total']['total']
    metadata['Decoder Parameters'] = decoder['total']
    if report['lors']:
        metadata['Decoder Shared Parameters'] = decoder['shared']
        metadata['Stock Decoder Parameters'] = decoder['stock_equivalent']
    entry = {'Name': name, 'In Collection': collection, 'Config': config,
             'Metadata': metadata}
    reference = REFERENCE_RESULTS.get(name)
    if reference is not None:
        entry['Results'] = [{'Task': 'Object Detection', 'Dataset': 'COCO',
                             'Metrics': {'box AP': reference['box_ap']}}]
        entry['Results Source'] = f'{NOT_TRAINED_HERE}: {reference["source"]}'
    stock = stock_results.get(name[len('lors-'):]) if name.startswith('lors-') else None
    if stock is not None:
        entry['Stock Baseline'] = {
            'Name': name[len('lors-'):], 'Dataset': 'COCO', 'box AP': stock['box AP'],
            'Source': f'{NOT_TRAINED_HERE}: mmdet model zoo ({stock["metafile"]} of the '
            'installed mmdet)'}
    return entry


def metafile(root: str, family: str, parameter_report: ParameterReport,
             stock_results: Dict[str, dict]) -> dict:
    """The ``metafile.yml`` content of ``configs/<family>/``."""
    info = COLLECTIONS[family]
    collection = {
        'Name': info['Name'],
        'Metadata': {'Training Techniques': ['AdamW', 'Gradient Clip'],
                     'Architecture': info['Architecture']},
        'Paper': info['Paper'], 'README': info['README'], 'Code': {'URL': info['Code']}}
    models = [model_entry(root, config, info['Name'],
                          parameter_report(osp.join(root, config)), stock_results)
              for config in family_configs(root, family)]
    return {'Collections': [collection], 'Models': models}


def render(content: dict) -> str:
    return HEADER + yaml.safe_dump(content, sort_keys=False, width=1000, allow_unicode=True)


def model_index_files(root: str, parameter_report: ParameterReport) -> Dict[str, str]:
    """``{path relative to root: text}`` of every metafile and of ``model-index.yml``."""
    stock_results = mmdet_results()
    files = {}
    for family in COLLECTIONS:
        files[f'configs/{family}/metafile.yml'] = render(
            metafile(root, family, parameter_report, stock_results))
    files['model-index.yml'] = render({'Import': list(files)})
    return files


def unlisted_families(root: str) -> List[str]:
    """Config folders with configs that no collection covers."""
    folders = {osp.basename(osp.dirname(path))
               for path in glob.glob(osp.join(root, 'configs', '*', '*.py'))}
    return sorted(folders - set(COLLECTIONS) - {'_base_'})
