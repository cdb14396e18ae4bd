"""lors_mmdet's import graph: no cycle between its modules, and lors_mmdet.lors
depends on torch only (no mmdet / mmengine / mmcv)."""
import ast
import pathlib
import subprocess
import sys
import textwrap
from typing import Dict, List, Tuple

import lors_mmdet

FORBIDDEN = ('mmdet', 'mmengine', 'mmcv')
PACKAGE_DIR = pathlib.Path(lors_mmdet.__file__).parent
LORS_DIR = PACKAGE_DIR / 'lors'
DYNAMIC = ('import_module', '__import__')
UNKNOWN = '<computed name>'


def package_modules() -> Dict[str, pathlib.Path]:
    """Module name -> file, for every module of lors_mmdet (a package by its
    own name, the file being its ``__init__.py``)."""
    modules = {}
    for file in sorted(PACKAGE_DIR.rglob('*.py')):
        parts = list(file.relative_to(PACKAGE_DIR.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        modules['.'.join(parts)] = file
    return modules


def imports_of(name: str, file: pathlib.Path,
               modules: Dict[str, pathlib.Path]) -> List[Tuple[str, int]]:
    """``(absolute module name, line)`` of every import statement in ``file``,
    those inside functions included (a lazy import closes a cycle as well).

    ``from package import name`` counts as an import of ``package.name`` where
    that is a module of ``modules``, else of ``package``; ``import_module`` /
    ``__import__`` of a literal name as an import of that name, of anything
    else as one of :data:`UNKNOWN`.

    Args:
        name: the module's name (see :func:`package_modules`).
        file: its source.
        modules: the known modules.
    """
    package = name if file.name == '__init__.py' else name.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            for alias in node.names:
                child = f'{base}.{alias.name}'
                found.append((child if child in modules else base, node.lineno))
        elif (isinstance(node, ast.Call) and getattr(
                node.func, 'attr', getattr(node.func, 'id', None)) in DYNAMIC):
            argument = node.args[0] if node.args else None
            literal = isinstance(argument, ast.Constant) and isinstance(
                argument.value, str)
            found.append((argument.value if literal else UNKNOWN, node.lineno))
    return found


def find_cycle(graph: Dict[str, List[str]]) -> List[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``; ``[]`` when it has none."""
    done, path = set(), []

    def visit(node: str) -> List[str]:
        path.append(node)
        for target in graph[node]:
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        done.add(path.pop())
        return []

    for node in graph:
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_find_cycle_finds_a_lazy_cycle_and_none_in_a_tree():
    assert find_cycle({'a': ['b'], 'b': ['c'], 'c': []}) == []
    assert find_cycle({'a': ['b'], 'b': ['c'], 'c': ['b']}) == ['b', 'c', 'b']


def test_no_import_cycle_between_package_modules():
    modules = package_modules()
    assert 'lors_mmdet.lors.surgery' in modules and 'lors_mmdet.models' in modules
    graph = {
        name: sorted({target for target, _ in imports_of(name, file, modules)
                      if target in modules and target != name})
        for name, file in modules.items()
    }
    cycle = find_cycle(graph)
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


def test_lors_sources_import_only_torch_and_stdlib():
    modules = package_modules()
    files = {name: file for name, file in modules.items()
             if name == 'lors_mmdet.lors' or name.startswith('lors_mmdet.lors.')}
    assert len(files) > 5, LORS_DIR
    for name, file in files.items():
        for target, line in imports_of(name, file, modules):
            top = target.split('.')[0]
            inside = target == 'lors_mmdet.lors' or target.startswith('lors_mmdet.lors.')
            assert (top not in FORBIDDEN and target != UNKNOWN
                    and (top != 'lors_mmdet' or inside)), f'{file}:{line} imports {target}'


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
    lors_stack = lors.apply_lors(encoder, 'layers', dict(rank=2, layer_groups=1))
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


# Calls that read or write files; below lors_mmdet.apis, models/ makes none.
FILE_CALLS = ('open', 'save', 'load', 'makedirs', 'save_checkpoint_file',
              'load_any_checkpoint', 'safe_load_checkpoint', 'load_checkpoint',
              'fromfile', 'load_config', 'get_config', 'put', 'put_text')
# The one exception, named: a distilling detector loads the teacher its config
# names at its first training step, inside the model.
FILE_IO_LEFT = {('lors_mmdet.models.distill', call)
                for call in ('load_config', 'load_checkpoint')}
BELOW_APIS = ('lors_mmdet.models', 'lors_mmdet.engine', 'lors_mmdet.datasets',
              'lors_mmdet.lors')


def test_modules_below_the_workflow_layer_never_import_it():
    modules = package_modules()
    assert 'lors_mmdet.apis.steps' in modules
    for name, file in modules.items():
        if name.startswith(BELOW_APIS):
            for target, line in imports_of(name, file, modules):
                assert not target.startswith('lors_mmdet.apis'), \
                    f'{file}:{line} imports {target}'


def test_models_do_no_file_io():
    modules = package_modules()
    files = {n: f for n, f in modules.items() if n.startswith('lors_mmdet.models')}
    assert len(files) > 5
    for name, file in files.items():
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Call):
                called = getattr(node.func, 'attr', getattr(node.func, 'id', None))
                assert called not in FILE_CALLS or (name, called) in FILE_IO_LEFT, \
                    f'{file}:{node.lineno} calls {called} (file I/O belongs in lors_mmdet.apis)'
