"""Write (or ``--check``) ``configs/<family>/metafile.yml`` and ``model-index.yml``.

    python tools/analysis/model_index.py            # rewrite the files
    python tools/analysis/model_index.py --check    # exit 1 naming each stale file

Parameter counts come from ``param_report.py`` (each tensor once, models built on
the meta device); what else goes in the files: ``tools/upkeep/model_index.py``.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from tools.analysis.param_report import build_model, parameter_report  # noqa: E402
from tools.upkeep.model_index import model_index_files, unlisted_families  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 if a file differs from what would be written')
    args = parser.parse_args(argv)
    unlisted = unlisted_families(ROOT)
    if unlisted:
        print(f'error: configs/{unlisted[0]}/ has no collection in '
              'tools/upkeep/model_index.py COLLECTIONS', file=sys.stderr)
        return 2
    files = model_index_files(ROOT, lambda config: parameter_report(build_model(config)))
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
