"""What the writing tools write: never over an input, nothing before every check
passes, and configs whose every value is data.

Inputs are real files (torch.save checkpoints of real mmdet models, configs);
"unchanged" means the same bytes (sha256 before and after). Code injected
through a name or a path would touch a marker file: it must never appear.
"""
import hashlib
import os
import os.path as osp
import runpy
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import lors_mmdet  # noqa: F401
from lors_mmdet.apis import build_model, compress, convert_checkpoint
from lors_mmdet.engine.outputs import check_outputs, same_file
from lors_mmdet.engine.config_source import assignment, comment, python_literal
from lors_mmdet.engine.lors_settings import write_matching_config
from test_adamixer_converter import build_detector, official_adamixer
from test_adamixer_merge import TOY, trained_like_lors_toy
from test_detr_convert import save, trained_like, write_config
from test_detr_lors import ROOT, tiny_model_cfg
from test_detr_lors import build_model as build_tiny

STOCK_CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_detr_synthetic.py')
# Touches the file named by $LORS_MARKER; holds no '/', so it fits in a path
# component as well as in a name.
PAYLOAD = ('__import__("pathlib").Path(__import__("os").environ["LORS_MARKER"])'
           '.touch()')


def sha256(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_tool(args, **env):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def aliases(path, tmp_path):
    """Other names of ``path``: a symlink, a hard link, a detour through '..'."""
    symlink, hardlink = tmp_path / 'alias_symlink.pth', tmp_path / 'alias_hard.pth'
    symlink.symlink_to(path)
    os.link(path, hardlink)
    detour = osp.join(osp.dirname(path), '..', osp.basename(osp.dirname(path)),
                      osp.basename(path))
    return [str(symlink), str(hardlink), detour]


@pytest.fixture(scope='module')
def stock_detr(tmp_path_factory):
    """A stock tiny DETR checkpoint of tests/configs/tiny_detr_synthetic.py."""
    model = build_model(Config.fromfile(STOCK_CONFIG).model)
    path = tmp_path_factory.mktemp('stock') / 'detr.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return str(path)


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / 'INJECTED'
    monkeypatch.setenv('LORS_MARKER', str(path))
    return path


# --------------------------------------------------------------------------
# The output is never an input
# --------------------------------------------------------------------------
def test_check_outputs_finds_the_same_file_under_any_name(tmp_path):
    source = tmp_path / 'in.pth'
    source.write_bytes(b'weights')
    for alias in aliases(str(source), tmp_path):
        assert same_file(alias, str(source))
        with pytest.raises(ValueError, match=r'the output checkpoint .* is the '
                           r'input checkpoint .*in\.pth'):
            check_outputs(dict(checkpoint=str(source)), dict(checkpoint=alias))
    with pytest.raises(ValueError, match='outputs config and checkpoint are the '
                       'same file'):
        check_outputs({}, dict(config=str(tmp_path / 'a'),
                               checkpoint=str(tmp_path / 'a')))
    # URLs and package configs are no local files; new paths are fine
    check_outputs(dict(checkpoint='https://x/in.pth', config='mmdet::detr/a.py'),
                  dict(checkpoint=str(tmp_path / 'new.pth')))


def test_convert_tool_leaves_its_input_when_told_to_write_over_it(tmp_path):
    stock = trained_like(build_tiny(tiny_model_cfg('DeformableDETR')))
    checkpoint = save(stock, tmp_path / 'same.pth')
    config = write_config(tmp_path / 'lors.py', tiny_model_cfg(
        'DeformableDETR', lors=dict(decoder=dict(rank=4))))
    before = sha256(checkpoint)
    result = run_tool(['tools/convert_checkpoint.py', 'to-lors', config,
                       checkpoint, checkpoint])
    assert result.returncode != 0
    assert 'is the input checkpoint' in result.stderr
    assert sha256(checkpoint) == before
    for alias in aliases(checkpoint, tmp_path):
        with pytest.raises(ValueError, match='is the input checkpoint'):
            convert_checkpoint('to-lors', config, checkpoint, alias)
        assert sha256(checkpoint) == before
    assert sorted(os.listdir(tmp_path)) == [
        'alias_hard.pth', 'alias_symlink.pth', 'lors.py', 'same.pth']


def test_matching_config_is_never_written_over_its_base(tmp_path):
    config = write_config(tmp_path / 'lors.py', tiny_model_cfg(
        'DeformableDETR', lors=dict(decoder=dict(rank=8))))
    before = sha256(config)
    settings = {'model.lors': {'decoder': {'rank': 4}}}
    with pytest.raises(ValueError, match='output config .* is the input config'):
        write_matching_config(config, settings, config, str(tmp_path / 'x.pth'))
    assert sha256(config) == before


def test_convert_adamixer_tool_refuses_a_hard_link_to_its_source(
        tmp_path, monkeypatch):
    model = build_detector(False, 2, 8, 6)
    src = tmp_path / 'official.pth'
    torch.save(dict(state_dict=official_adamixer(model.backbone.state_dict())),
               src)
    before = sha256(src)
    dst = tmp_path / 'converted.pth'
    os.link(src, dst)
    monkeypatch.setattr(sys, 'argv', ['convert_adamixer_checkpoint.py',
                                      str(src), str(dst)])
    with pytest.raises(SystemExit, match='is the input src'):
        runpy.run_path(osp.join(ROOT, 'tools/convert_adamixer_checkpoint.py'),
                       run_name='__main__')
    assert sha256(src) == before


def test_merge_tool_writes_nothing_when_the_config_name_is_wrong(tmp_path):
    _, lors = trained_like_lors_toy()
    checkpoint = tmp_path / 'lors.pth'
    torch.save(dict(state_dict=lors.state_dict()), checkpoint)
    result = run_tool(['tools/convert_checkpoint.py', 'to-stock', TOY,
                       str(checkpoint), str(tmp_path / 'x.pth'),
                       '--out-config', str(tmp_path / 'x.txt')])
    assert result.returncode != 0
    assert 'x.txt) is a .py file' in result.stderr
    assert sorted(os.listdir(tmp_path)) == ['lors.pth']


def test_merge_refuses_an_input_or_one_file_for_both_outputs(tmp_path):
    _, lors = trained_like_lors_toy()
    checkpoint = tmp_path / 'lors.pth'
    torch.save(dict(state_dict=lors.state_dict()), checkpoint)
    before = sha256(checkpoint)
    link = tmp_path / 'link.pth'
    link.symlink_to(checkpoint)
    with pytest.raises(ValueError, match='output checkpoint .* is the input '
                       'checkpoint'):
        convert_checkpoint('to-stock', TOY, str(checkpoint), str(link),
                           out_config=str(tmp_path / 'plain.py'))
    with pytest.raises(ValueError, match='outputs checkpoint and out_config are '
                       'the same file'):
        convert_checkpoint('to-stock', TOY, str(checkpoint),
                           str(tmp_path / 'plain.py'),
                           out_config=str(tmp_path / 'plain.py'))
    assert sha256(checkpoint) == before
    assert sorted(os.listdir(tmp_path)) == ['link.pth', 'lors.pth']


@pytest.mark.parametrize('force', [False, True])
def test_compress_refuses_to_replace_its_input_even_with_force(
        stock_detr, tmp_path, force):
    checkpoint = tmp_path / 'detr.pth'
    checkpoint.write_bytes(open(stock_detr, 'rb').read())
    before = sha256(checkpoint)
    with pytest.raises(ValueError, match='output checkpoint .* is the input '
                       'checkpoint'):
        compress(STOCK_CONFIG, str(checkpoint), str(tmp_path), name='detr',
                 rank=2, force=force)
    assert sha256(checkpoint) == before
    assert os.listdir(tmp_path) == ['detr.pth']


def test_pretrain_toy_backbone_refuses_to_write_over_its_annotations(tmp_path):
    from lors_mmdet.datasets.synthetic import generate_synthetic_coco
    root = str(tmp_path / 'data')
    generate_synthetic_coco(root, num_train=2, num_val=1, img_size=64, seed=0)
    annotations = osp.join(root, 'annotations', 'instances_train.json')
    before = sha256(annotations)
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'pretrain_toy_backbone.py'))
    with pytest.raises(ValueError, match='is the input train annotations'):
        tool['main'](['--data-root', root, '--out', annotations, '--iters', '1',
                      '--batch-size', '2', '--window', '16', '--jitter', '0',
                      '--extra-images', '0', '--threads', '1'])
    assert sha256(annotations) == before


# --------------------------------------------------------------------------
# Written configs: names validated, values literal
# --------------------------------------------------------------------------
def test_compress_tool_refuses_a_name_that_carries_code(stock_detr, tmp_path,
                                                       marker):
    name = f'evil\n_x = {PAYLOAD}\n#'
    result = run_tool(['tools/compress.py', STOCK_CONFIG, stock_detr, '--out',
                       str(tmp_path / 'out'), '--name', name, '--rank', '2'],
                      LORS_MARKER=str(marker))
    assert result.returncode != 0
    assert 'the output name (--name)' in result.stderr
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', ['.hidden', '-rf', 'a/b', 'a b', 'x{{y}}',
                                  "it's", 'a\\b', 'x' * 129])
def test_compress_names_are_plain_file_stems(stock_detr, tmp_path, name):
    with pytest.raises(ValueError, match=r'the output name \(--name\)'):
        compress(STOCK_CONFIG, stock_detr, str(tmp_path), name=name, rank=2)
    assert not os.listdir(tmp_path)


def test_a_default_name_from_an_odd_config_name_is_refused(stock_detr, tmp_path):
    with pytest.raises(ValueError, match=r"output name \(--name\) "
                       r"'lors-compressed_my config' is not allowed"):
        compress(str(tmp_path / 'my config.py'), stock_detr, str(tmp_path),
                 rank=2)
    assert not os.listdir(tmp_path)


def test_paths_and_command_in_a_written_config_stay_data(stock_detr, tmp_path,
                                                          marker):
    # A config whose file name breaks out of a comment line, an output folder
    # that mmengine's {{ fileDirname }} substitution would splice into a
    # string literal, and a command line with both.
    config = tmp_path / f'cfg\n{PAYLOAD}\n#.py'
    config.write_text(f'_base_ = {STOCK_CONFIG!r}\n')
    out_dir = tmp_path / f"a'+{PAYLOAD}+'" / '{{ fileDirname }}'
    result = compress(str(config), stock_detr, str(out_dir), name='ok', rank=2,
                      command=f'python tools/compress.py {config} --out {out_dir}'
                      '\n' + PAYLOAD)
    written = Config.fromfile(result.config)
    assert not marker.exists()
    assert written.load_from == osp.abspath(result.checkpoint)
    assert written.model.type == 'LorsDETR'
    with open(result.config) as f:
        text = f.read()
    assert '{' not in text and '}' not in text
    assert not [line for line in text.splitlines() if PAYLOAD in line
                and not line.startswith('#') and "'" not in line]


def test_python_literal_writes_data_only():
    value = {'a': [1, 2.5, (3, )], 'if': None, 'k{{ fileDirname }}':
             "it's \"q\" {{ _base_.model }}\n\\{", 'b': True}
    assert eval(python_literal(value), {'__builtins__': {'dict': dict}}) == value
    assert '{{' not in python_literal(value)
    assert assignment('model', dict(type='X')) == "model = dict(type='X')"
    assert comment('a\nb') == '# a\\nb'
    with pytest.raises(ValueError, match=r'model\.lr: nan cannot be written'):
        python_literal(dict(lr=float('nan')), 'model')
    with pytest.raises(TypeError, match=r'v\[0\]: a object cannot be written'):
        python_literal([object()], 'v')
    with pytest.raises(ValueError, match='expected a Python identifier'):
        assignment('x = 1\nimport os\ny', 1)


# --------------------------------------------------------------------------
# Numbers on the command line
# --------------------------------------------------------------------------
@pytest.mark.parametrize('option, value, message', [
    ('--lr-factor', '-1', r'--lr-factor\) must be a finite number > 0, got -1'),
    ('--lr-factor', 'nan', r'--lr-factor\) must be a finite number > 0, got nan'),
    ('--lr-factor', 'inf', r'--lr-factor\) must be a finite number > 0, got inf'),
    ('--finetune-fraction', 'nan', r'--finetune-fraction\) must be in \(0, 1\]'),
    ('--distill', 'nan', 'weight must be a finite number >= 0, got nan'),
    ('--energy', 'nan', r'energy target must be in \(0, 1\], got nan'),
])
def test_compress_numbers_are_checked_before_writing(stock_detr, tmp_path,
                                                     option, value, message):
    kwargs = dict(fraction=0.2, lr_factor=0.1, distill=None, energy=None, rank=2)
    key = {'--lr-factor': 'lr_factor', '--finetune-fraction': 'fraction',
           '--distill': 'distill', '--energy': 'energy'}[option]
    kwargs[key] = dict(weight=float(value)) if key == 'distill' else float(value)
    if key == 'energy':
        kwargs['rank'] = None
    with pytest.raises(ValueError, match=message):
        compress(STOCK_CONFIG, stock_detr, str(tmp_path / 'out'), **kwargs)
    assert not (tmp_path / 'out').exists()


def test_compress_tool_names_a_bad_lr_factor(stock_detr, tmp_path):
    result = run_tool(['tools/compress.py', STOCK_CONFIG, stock_detr, '--out',
                       str(tmp_path / 'out'), '--rank', '2', '--lr-factor', '-1'])
    assert result.returncode != 0
    assert '--lr-factor) must be a finite number > 0, got -1.0' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_convert_and_pretrain_tools_name_bad_numbers(tmp_path):
    result = run_tool(['tools/convert_checkpoint.py', 'to-lors', 'a.py',
                       'b.pth', str(tmp_path / 'c.pth'), '--rank', '-3'])
    assert result.returncode == 2
    assert "--rank must be a positive int or 'full', got '-3'" in result.stderr
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'pretrain_toy_backbone.py'))
    for lr in ('nan', '-1'):
        with pytest.raises(SystemExit):
            tool['parse_args'](['--out', str(tmp_path / 'x.pth'), '--lr', lr])
    assert not os.listdir(tmp_path)
