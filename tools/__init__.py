"""The repository's tools: command-line scripts and the code they share.

Not part of the installed plugin (``setup.py`` ships ``lors_mmdet`` only): this
package exists so that scripts and tests import shared code by name, never by
file path. Repository upkeep that the plugin does not need lives in
:mod:`tools.upkeep`; a script reuses another script's functions through
``tools.analysis.<script>``.

Scripts are run as files from a checkout (``python tools/analysis/x.py``), where
Python puts only the script's own folder on ``sys.path``. A script that imports
``tools.*`` therefore puts the checkout's root first, before its other imports::

    ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py

so that ``tools`` (and ``lors_mmdet``) resolve to this checkout. This is the only
way a script reaches other code of the repository: none loads a file by path.
Tests run from the root (``pytest.ini`` puts it on the path) and import
``tools.*`` directly.
"""
