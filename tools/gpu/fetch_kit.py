"""Download what the GPU machine lacks into an ignored folder (run where pip has network).

    python tools/gpu/fetch_kit.py                 # -> gpu_kit/ (checked against the manifest)
    python tools/gpu/fetch_kit.py --update        # after changing tools/upkeep/gpu_kit.py's list

The files and their sha256 are in tools/gpu/kit_manifest.json; carry the folder with the
device tool (`carry: ["gpu_kit"]`) and install it there with tools/gpu/install_offline.py.
"""
import argparse
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a file: see tools/__init__.py
from tools.upkeep import gpu_kit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dest', default=osp.join(REPO, 'gpu_kit'))
    parser.add_argument('--manifest', default=osp.join(REPO, 'tools', 'gpu',
                                                       'kit_manifest.json'))
    parser.add_argument('--update', action='store_true',
                        help='rewrite the manifest instead of checking against it')
    args = parser.parse_args()
    files = gpu_kit.fetch_kit(args.dest, args.manifest, update=args.update)
    total = sum(kit_file.bytes for kit_file in files)
    print(f'{len(files)} files, {total / 2**20:.2f} MiB in {args.dest}')


if __name__ == '__main__':
    main()
