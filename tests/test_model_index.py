"""model-index.yml and configs/<family>/metafile.yml: parsed as mmengine's inferencers
parse them, every config listed and buildable, the counts fresh, references sourced."""
import glob
import os.path as osp

import pytest
import yaml

from tools.upkeep.model_index import NOT_TRAINED_HERE, mmdet_results

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def models() -> list:
    from mmengine.infer.infer import BaseInferencer
    return list(BaseInferencer._get_models_from_metafile(ROOT))


def load(path: str) -> dict:
    with open(osp.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def test_every_config_is_listed_once_and_exists(models):
    names = [model['Name'] for model in models]
    assert len(names) == len(set(names))
    listed = sorted(model['Config'] for model in models)
    on_disk = sorted(osp.relpath(path, ROOT)
                     for path in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))
                     if not path.startswith(osp.join(ROOT, 'configs', '_base_')))
    assert listed == on_disk
    for model in models:
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]


def test_models_belong_to_a_collection_of_their_metafile():
    for path in load('model-index.yml')['Import']:
        content = load(path)
        collections = {c['Name'] for c in content['Collections']}
        assert len(collections) == 1, path
        for model in content['Models']:
            assert model['In Collection'] in collections, (path, model['Name'])
            assert osp.dirname(model['Config']) == osp.dirname(path)
        collection = content['Collections'][0]
        assert osp.isfile(osp.join(ROOT, collection['README'])), path
        code = collection['Code']['URL']
        assert code.startswith('https://') or osp.exists(osp.join(ROOT, code)), path


def test_the_files_are_what_the_tool_writes(capsys):
    """Rebuilds every listed config (on the meta device) through param_report.py and
    compares the files with what the tool would write: stale counts fail here."""
    from tools.analysis import model_index
    code = model_index.main(['--check'])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err


@pytest.mark.parametrize('config', sorted(
    osp.relpath(path, ROOT) for path in glob.glob(osp.join(ROOT, 'configs', '*', '*toy*.py'))))
def test_toy_parameter_counts_match_the_built_model(config, models):
    """An independent count for the cheap configs: the real model, initialised as for
    training, each tensor once."""
    from lors_mmdet.analysis import build_detector
    model = build_detector(osp.join(ROOT, config))
    listed = next(m for m in models if m['Config'] == config)['Metadata']
    assert listed['Parameters'] == sum(p.numel() for p in model.parameters())
    decoder = model.roi_head if hasattr(model, 'roi_head') else model.decoder
    assert listed['Decoder Parameters'] == sum(p.numel() for p in decoder.parameters())


def test_coco_numbers_are_references_with_their_source(models):
    stock = mmdet_results()
    with_results = [m for m in models if m.get('Results')]
    assert {m['Name'] for m in with_results} == {
        'adamixer_r50_8xb2-1x-100q_coco', 'adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco',
        'adamixer_r101_8xb2-crop-ms-480-800-3x-300q_coco',
        'adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco'}
    for model in with_results:
        assert model['Results Source'].startswith(NOT_TRAINED_HERE + ': ')
        assert model['Results'][0]['Dataset'] == 'COCO'
    baselines = {m['Name']: m['Stock Baseline'] for m in models if 'Stock Baseline' in m}
    assert 'lors-dino-4scale_r50_8xb2-12e_coco' in baselines
    assert 'lors-deformable-detr_r50_16xb2-50e_coco' in baselines
    for name, baseline in baselines.items():
        assert baseline['Name'] == name[len('lors-'):]
        assert baseline['box AP'] == stock[baseline['Name']]['box AP']
        assert baseline['Source'].startswith(NOT_TRAINED_HERE + ': mmdet model zoo')
    # mmdet's own metafile, read here without the generator's parser
    import mmdet
    dino = yaml.safe_load(open(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                                        'dino', 'metafile.yml')))
    twelve = next(m for m in dino['Models'] if m['Name'] == 'dino-4scale_r50_8xb2-12e_coco')
    assert baselines['lors-dino-4scale_r50_8xb2-12e_coco']['box AP'] == \
        twelve['Results'][0]['Metrics']['box AP']
