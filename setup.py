import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open(osp.join('lors_mmdet', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='lors_mmdet',
    version=read_version(),
    description='LORS (Low-rank Residual Structure, CVPR 2024) for MMDetection 3.x',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['lors_mmdet', 'lors_mmdet.*']),
    python_requires='>=3.8',
    # torch, mmcv (with compiled ops) and mmdet are installed by tools/install.sh:
    # mmcv must be built against the installed torch, which pip cannot express.
    install_requires=['numpy', 'Pillow', 'pycocotools', 'tqdm', 'matplotlib'],
    extras_require={
        'tests': ['pytest', 'transformers'],
        # mmdet's tools/analysis_tools: analyze_logs.py (seaborn, pandas), benchmark.py (psutil)
        'tools': ['seaborn', 'pandas', 'psutil'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
