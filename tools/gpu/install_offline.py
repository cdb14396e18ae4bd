"""Install the carried kit (tools/gpu/fetch_kit.py) on a GPU machine without network.

    python3 tools/gpu/install_offline.py [--kit gpu_kit] [--python /opt/torch/.venv/bin/python3]
        [--mmcv auto|cuda|cpu] [--cuda-build-seconds 120] [--cpu-build-seconds 240]
        [--report install.json] [--build-log mmcv_build.log]
        [--manifest tools/gpu/kit_manifest.json]

Wheels go in with `pip install --no-index`; mmcv 2.1.0 is built from the carried sdist
with CUDA ops (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0) within its time limit, else with
CPU ops only, which lors_mmdet.compat then completes with PyTorch implementations on
CUDA. Prints the time of each step and which path was used.
"""
import argparse
import json
import os
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a file: see tools/__init__.py
from tools.upkeep import gpu_kit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kit', default=osp.join(REPO, 'gpu_kit'))
    parser.add_argument('--manifest',
                        default=osp.join(REPO, 'tools', 'gpu', 'kit_manifest.json'),
                        help='check the files against this (default: the committed one)')
    parser.add_argument('--python', default=sys.executable,
                        help='the interpreter to install into (default: this one)')
    parser.add_argument('--mmcv', choices=['auto', 'cuda', 'cpu'], default='auto')
    parser.add_argument('--cuda-build-seconds', type=float, default=300)
    parser.add_argument('--cpu-build-seconds', type=float, default=300)
    parser.add_argument('--jobs', type=int, default=os.cpu_count())
    parser.add_argument('--cuda-arch', default='9.0')
    parser.add_argument('--build-log', default='mmcv_build.log')
    parser.add_argument('--report', help='write the report (JSON) here')
    args = parser.parse_args()
    try:
        report = gpu_kit.install_kit(
            args.kit, args.python, mmcv_mode=args.mmcv,
            cuda_build_seconds=args.cuda_build_seconds,
            cpu_build_seconds=args.cpu_build_seconds, jobs=args.jobs,
            cuda_arch=args.cuda_arch, build_log=osp.abspath(args.build_log),
            manifest_path=args.manifest)
    except (gpu_kit.KitError, FileNotFoundError, ValueError) as error:
        sys.exit(f'install_offline: {error}')
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report, f, indent=1)
    print(json.dumps(dict(path=report['path'], mmcv=report['mmcv']), indent=None))


if __name__ == '__main__':
    main()
