"""Write (or ``--check``) ``configs/<family>/metafile.yml`` and ``model-index.yml``.

    python tools/analysis/model_index.py            # rewrite the files
    python tools/analysis/model_index.py --check    # exit 1 naming each stale file

Parameter counts come from ``param_report.py`` (each tensor once, models built on
the meta device); what else goes in the files: ``lors_mmdet/model_index.py``.
"""
import argparse
import importlib.util
import os.path as osp
import sys

from lors_mmdet.model_index import model_index_files, unlisted_families

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))


def load_param_report():
    spec = importlib.util.spec_from_file_location('param_report',
                                                  osp.join(HERE, 'param_report.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 if a file differs from what would be written')
    args = parser.parse_args(argv)
    unlisted = unlisted_families(ROOT)
    if unlisted:
        print(f'error: configs/{unlisted[0]}/ has no collection in '
              'lors_mmdet/model_index.py COLLECTIONS', file=sys.stderr)
        return 2
    tool = load_param_report()
    files = model_index_files(ROOT, lambda config: tool.parameter_report(
        tool.build_model(config)))
    stale = []
    for path, text in files.items():
        full = osp.join(ROOT, path)
        current = open(full).read() if osp.isfile(full) else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            with open(full, 'w') as f:
                f.write(text)
    verb = 'stale' if args.check else 'written'
    for path in stale:
        print(f'{verb}: {path}')
    print(f'{len(files) - len(stale)} of {len(files)} files up to date')
    if args.check and stale:
        print('rerun: python tools/analysis/model_index.py', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
