"""lors_mmdet.lors must depend on torch only (no mmdet / mmengine / mmcv)."""
import ast
import pathlib
import subprocess
import sys
import textwrap

import lors_mmdet

FORBIDDEN = ('mmdet', 'mmengine', 'mmcv')
LORS_DIR = pathlib.Path(lors_mmdet.__file__).parent / 'lors'


def test_lors_sources_import_only_torch_and_stdlib():
    files = sorted(LORS_DIR.glob('*.py'))
    assert files, LORS_DIR
    for file in files:
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:  # relative: stays inside lors_mmdet.lors
                    continue
                names = [node.module or '']
            elif (isinstance(node, ast.Call)
                  and getattr(node.func, 'attr', None) == 'import_module'):
                raise AssertionError(f'{file.name}: dynamic import')
            else:
                continue
            for name in names:
                assert name.split('.')[0] not in FORBIDDEN + ('lors_mmdet', ), (
                    f'{file.name} imports {name}')


# Runs in a fresh interpreter where the OpenMMLab packages look uninstalled:
# every finder on sys.meta_path is wrapped so that it does not see them, so
# importlib.util.find_spec returns None and `import mmdet` fails, exactly as
# on a machine without them.
BLOCKED_RUN = textwrap.dedent('''
    import importlib.util
    import sys

    BLOCKED = {blocked!r}
    attempts = []

    class Hide:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                attempts.append(name)
                return None
            find_spec = getattr(self.finder, 'find_spec', None)
            return None if find_spec is None else find_spec(name, path, target)

        def invalidate_caches(self):
            if hasattr(self.finder, 'invalidate_caches'):
                self.finder.invalidate_caches()

    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
    assert importlib.util.find_spec('mmdet') is None
    try:
        import mmengine  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError('the blocker does not work')
    attempts.clear()

    import torch
    import lors_mmdet.lors as lors

    torch.manual_seed(0)
    stack = lors.LorsLinearStack(8, 6, 3, rank=[1, 2, 2], num_terms=[1, 1, 2])
    x = torch.randn(4, 8, requires_grad=True)
    sum(layer(x).sum() for layer in stack).backward()
    assert stack.shared.weight.grad is not None
    {extra}
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
    assert not loaded, loaded
    print('OK', sorted(set(a.split('.')[0] for a in attempts)))
''')

EXTRA_USES = """
    generator = lors.SharedGenerator(8, 2, [(4, 4), (6, 3)], num_layers=2)
    adaptive = lors.LorsAdaptive(generator, core_size=2, adaptive_terms=2)
    matrices = adaptive(torch.randn(5, 8))
    out = matrices.apply_left(1, matrices.apply_right(torch.randn(5, 2, 3, 4), 0))
    assert out.shape == (5, 2, 6, 4)
    merged = lors.merge_linears(stack.shared, stack.layers)
    shared, layers, errors = lors.lors_from_dense(merged, rank=2)
    assert lors.count_parameters(stack).total > 0
    lors.reset_lors_parameters(stack)
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(8, 2, 16), 2,
        enable_nested_tensor=False)
    lors_stack = lors.apply_lors(encoder, 'layers', dict(rank=2, groups=1))
    assert lors.find_lors_stacks(encoder) == [('lors_layers', lors_stack)]
    encoder(torch.randn(3, 1, 8)).sum().backward()
    assert lors.merge_lors(encoder) == 1
"""


def test_library_runs_with_openmmlab_hidden():
    code = BLOCKED_RUN.format(blocked=FORBIDDEN, extra=textwrap.dedent(EXTRA_USES))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # lors_mmdet/__init__ probes for mmdet and must have been refused.
    assert result.stdout.startswith('OK'), result.stdout
    assert "'mmdet'" in result.stdout
