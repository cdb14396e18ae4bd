"""Load checkpoints from any source mmengine accepts without ever running code from them.

Every checkpoint goes through :func:`safe_load_checkpoint`: the file's zip records must
be stored uncompressed (as torch.save writes them) and match their CRC-32 (torch does not
check them itself), then it is unpickled with ``torch.load(weights_only=True)`` and an
allow-list of exactly the non-tensor types mmengine writes, whose numpy arrays may take
no more memory than the file's size. :func:`install_safe_checkpoint_loaders` routes
every scheme of mmengine's ``CheckpointLoader`` here, and mmengine's ``load_url``:

=====================================  ==============================================
scheme                                 source of the bytes
=====================================  ==============================================
local path                             the file
``http://``, ``https://``              torch.hub's cache (downloaded once, rank 0 first)
``torchvision://``, ``modelzoo://``    URL of the named torchvision weights, then hub
``open-mmlab://``, ``openmmlab://``    URL (or file under ``$MMENGINE_HOME``) of the name
``mmcls://``                           URL of the named mmcls weights, then hub
``s3://``, ``petrel://``               bytes from mmengine's file backend
``pavi://``                            a temporary download
=====================================  ==============================================

A scheme some other package registers with mmengine, before or after this module's
install, is refused rather than loaded unsafely (the scheme table is checked at each
load). Loading by hand, use ``mmengine.runner.CheckpointLoader.load_checkpoint`` (any
source) or :func:`safe_load_checkpoint` (a path or a binary file object).
"""
import contextvars
import functools
import io
import math
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import torch

Source = Union[str, IO[bytes]]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint whose unpickling would call something not allow-listed."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that is empty, truncated or damaged."""


# --------------------------------------------------------------------------
# mmengine's own types
# --------------------------------------------------------------------------
def _history_buffer_getstate(self) -> dict:
    # The statistics methods live on the class (registered at import time);
    # pickling them made every checkpoint need `getattr` to load.
    return {key: value for key, value in self.__dict__.items()
            if key != 'statistics_methods'}


def _history_buffer_setstate(self, state: dict) -> None:
    state = dict(state)
    state.pop('statistics_methods', None)  # legacy: class-level, never per instance
    self._set_default_statistics()
    self.__dict__.update(state)


class _LegacyMethodReference:
    """Stands in for ``getattr(HistoryBuffer, name)`` in pre-fix checkpoints."""

    def __init__(self, owner: type, name: str) -> None:
        from mmengine.logging import HistoryBuffer
        if owner is not HistoryBuffer or not isinstance(name, str):
            raise UnsafeCheckpointError(
                f'checkpoint asks for getattr({owner!r}, {name!r}); only '
                'mmengine HistoryBuffer statistics references are accepted')
        self.name = name


class _AllocationLimit:
    """What one load may still allocate through numpy (None: no limit known)."""

    def __init__(self, budget: Optional[int]) -> None:
        self.budget = budget
        self.refusal: Optional[str] = None

    def charge(self, nbytes: int, what: str) -> None:
        if self.budget is None:
            return
        self.budget -= nbytes
        if self.budget < 0:
            self.refusal = (f'it asks for {what} of {nbytes} bytes, more than the file '
                            'holds; a checkpoint cannot need more memory than its size')
            raise UnsafeCheckpointError(self.refusal)


_LIMIT: contextvars.ContextVar[_AllocationLimit] = contextvars.ContextVar(
    'checkpoint_allocation_limit', default=_AllocationLimit(None))


@functools.lru_cache(maxsize=None)
def _checked_numpy() -> Tuple[type, Callable]:
    """An ndarray type and a ``_reconstruct`` for the unpickler, both bounded.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), 'b')`` followed by
    ``__setstate__((version, shape, dtype, is_fortran, data))``. Unchecked, the
    first can allocate any shape, calling ``ndarray`` directly too, and numpy's
    ``__setstate__`` reads past the end of a too-short list of objects.
    """
    import numpy as np
    reconstruct = (np._core if hasattr(np, '_core') else np.core).multiarray._reconstruct

    class CheckedArray(np.ndarray):
        """Stands in for ``numpy.ndarray`` while unpickling (see :func:`_plain_arrays`)."""

        def __new__(cls, *args, **kwargs):
            raise UnsafeCheckpointError('checkpoint calls numpy.ndarray(...) itself; '
                                        'numpy pickles arrays through _reconstruct')

        def __setstate__(self, state: tuple) -> None:
            if not (isinstance(state, tuple) and len(state) == 5):
                raise UnsafeCheckpointError(f'numpy array state {type(state).__name__} '
                                            'is not (version, shape, dtype, order, data)')
            shape, dtype, data = state[1], state[2], state[4]
            if not (isinstance(dtype, np.dtype) and not dtype.hasobject):
                raise UnsafeCheckpointError(f'numpy array of dtype {dtype!r}: only arrays '
                                            'of numbers, strings and bytes are accepted')
            nbytes = _array_bytes(shape, dtype)
            if not isinstance(data, (bytes, bytearray)) or len(data) != nbytes:
                raise UnsafeCheckpointError(f'numpy array data does not fill shape {shape}')
            _LIMIT.get().charge(nbytes, 'a numpy array')
            np.ndarray.__setstate__(self, state)

    def checked_reconstruct(cls: type, shape: Any, dtype: Any) -> Any:
        if cls is not CheckedArray:
            raise UnsafeCheckpointError(f'numpy _reconstruct of {cls!r}: only plain '
                                        'arrays are accepted')
        _LIMIT.get().charge(_array_bytes(shape, np.dtype(dtype)), 'a numpy array')
        return reconstruct(cls, shape, dtype)

    return CheckedArray, checked_reconstruct


def _array_bytes(shape: Any, dtype: Any) -> int:
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafeCheckpointError(f'numpy array shape {shape!r} is not a tuple of sizes')
    return math.prod(shape) * dtype.itemsize


def _plain_arrays(value: Any, array_type: type, seen: Dict[int, Any]) -> Any:
    """``value`` with every ``array_type`` in it (in dicts, lists, tuples, object
    attributes) turned back into a plain ``numpy.ndarray`` (a view, no copy)."""
    import numpy as np
    if isinstance(value, array_type):
        return seen.setdefault(id(value), value.view(np.ndarray))
    if isinstance(value, (torch.Tensor, str, bytes, int, float)) or value is None:
        return value
    if id(value) in seen:
        return seen[id(value)]
    seen[id(value)] = value
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _plain_arrays(item, array_type, seen)
    elif isinstance(value, list):
        value[:] = [_plain_arrays(item, array_type, seen) for item in value]
    elif isinstance(value, tuple):
        seen[id(value)] = tuple(_plain_arrays(item, array_type, seen) for item in value)
    elif hasattr(value, '__dict__') and not isinstance(value, type):
        _plain_arrays(vars(value), array_type, seen)
    return seen[id(value)]


def _numpy_globals() -> List[Any]:
    import numpy as np
    core = np._core if hasattr(np, '_core') else np.core
    array, reconstruct = _checked_numpy()
    found = [np.dtype, core.multiarray.scalar, (array, 'numpy.ndarray'),
             (reconstruct, f'{core.multiarray.__name__}._reconstruct')]
    # numpy 2 pickles dtypes through their per-type classes (numpy.dtypes.*DType).
    found += [type(np.dtype(name)) for name in
              ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
               'uint32', 'uint64', 'float16', 'float32', 'float64', 'str', 'object')]
    return found


def checkpoint_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """Exactly the non-tensor types mmengine writes into its checkpoints."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, *_numpy_globals(),
            (_LegacyMethodReference, 'builtins.getattr')]


# --------------------------------------------------------------------------
# One file (or buffer)
# --------------------------------------------------------------------------
def _header(source: Source, size: int) -> bytes:
    if isinstance(source, str):
        with open(source, 'rb') as f:
            return f.read(size)
    position = source.tell()
    try:
        source.seek(0)
        return source.read(size)
    finally:
        source.seek(position)


def _not_zip_problem(source: Source) -> str:
    """Why a file that is no complete zip archive is not a torch.save checkpoint."""
    header = _header(source, 4)
    if header.startswith(b'PK'):
        return 'it is not a complete torch zip archive (truncated?)'
    if header[:1] == b'\x80':
        return ("it is in torch's legacy (pre-1.6, non-zip) format, which has no "
                'checksums to check and which neither torch.save nor mmengine writes '
                'today; load it by name (--resume FILE, load_from) if you trust it')
    return "it is neither in torch.save's zip format nor in its legacy one"


def zip_checkpoint_problem(source: Source) -> Optional[str]:
    """Why a checkpoint in torch.save's zip format is damaged, or None if intact.

    The archive must open, hold a ``data.pkl``, store every record uncompressed (as
    torch.save does: a compressed record can unpack to far more memory than the
    file holds) and match every record's CRC-32. Nothing is unpickled.

    Args:
        source: Path of the file, or a binary file object.
    """
    try:
        if not _is_zip(source):
            return _not_zip_problem(source)
        with zipfile.ZipFile(source) as archive:
            if not any(name == 'data.pkl' or name.endswith('/data.pkl')
                       for name in archive.namelist()):
                return 'it is a zip archive without data.pkl, not a torch checkpoint'
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    return (f'record {info.filename} is compressed, which torch.save '
                            'never does (it could unpack to far more memory than the '
                            'file holds)')
                if info.file_size != info.compress_size:
                    return f'record {info.filename} has two different sizes (corrupted)'
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f'it is not a complete torch zip archive (truncated?): {error}'
    if damaged is not None:
        return f'record {damaged} fails its CRC-32 check (corrupted)'
    return None


def _is_zip(source: Source) -> bool:
    if isinstance(source, str):
        return zipfile.is_zipfile(source)
    position = source.tell()
    try:
        return zipfile.is_zipfile(source)
    finally:
        source.seek(position)


def _source_size(source: Source) -> int:
    if isinstance(source, str):
        return osp.getsize(source)
    position = source.tell()
    try:
        return source.seek(0, io.SEEK_END)
    finally:
        source.seek(position)


def _describe_corruption(error: BaseException) -> str:
    """What ``error`` from torch.load says about the file."""
    if isinstance(error, EOFError):
        return 'the file ends early (empty or truncated)'
    if isinstance(error, RuntimeError) and any(
            word in str(error) for word in ('EOF', 'magic number', 'zip archive', 'corrupt',
                                            'record size')):
        return str(error).split('\n')[0]
    return f'not a well-formed torch.save file ({type(error).__name__}: {error})'


def safe_load_checkpoint(source: Source, map_location: Optional[Any] = None,
                         name: Optional[str] = None) -> Any:
    """Load a checkpoint with ``weights_only=True`` and mmengine's types.

    Numpy arrays in it may take no more memory than the file's size, all together
    (tensors are bounded by the file already: torch.save's records are stored
    uncompressed and torch checks each record's size).

    Args:
        source: Path of the checkpoint file, or a binary file object.
        map_location: Same as :func:`torch.load`.
        name: How to call the checkpoint in errors (default: the path).

    Raises:
        FileNotFoundError: The file does not exist.
        CorruptCheckpointError: The file is empty, truncated, damaged, compressed,
            or not a well-formed torch.save file.
        UnsafeCheckpointError: Unpickling would call something that is not
            allow-listed (e.g. a ``__reduce__`` running a shell command) or
            allocate more memory than the file's size.
    """
    if isinstance(source, str):
        source = osp.expanduser(source)
        name = name or source
        if not osp.isfile(source):
            raise FileNotFoundError(f'checkpoint file {source} can not be found')
        if osp.getsize(source) == 0:
            raise CorruptCheckpointError(
                f'checkpoint {source} is empty (0 bytes); expected a file written by '
                'torch.save (an interrupted save or copy leaves such files)')
    name = name or repr(source)
    if _is_zip(source):
        problem = zip_checkpoint_problem(source)
        if problem is not None:
            raise CorruptCheckpointError(
                f'checkpoint {name} cannot be read: {problem}; expected a complete file '
                'written by torch.save')
        if not isinstance(source, str):
            source.seek(0)
    limit = _AllocationLimit(_source_size(source))
    token = _LIMIT.set(limit)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            loaded = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if limit.refusal is not None:
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {name}: {limit.refusal}') from None
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {name}: it needs objects outside '
            f'the allow-list of tensors, numpy arrays and mmengine buffers, '
            f'which could run code on load. Details: {error}') from error
    except (EOFError, KeyError, ValueError, RuntimeError, AttributeError, TypeError,
            IndexError) as error:
        if isinstance(error, RuntimeError) and 'device' in str(error):
            # map_location does not fit this machine: the file is fine
            raise RuntimeError(f'checkpoint {name}: {error}') from error
        raise CorruptCheckpointError(
            f'checkpoint {name} cannot be read: {_describe_corruption(error)}') from error
    finally:
        _LIMIT.reset(token)
    return _plain_arrays(loaded, _checked_numpy()[0], {})


# --------------------------------------------------------------------------
# URLs and named schemes
# --------------------------------------------------------------------------
def hub_cache_path(url: str, model_dir: Optional[str] = None,
                   file_name: Optional[str] = None) -> str:
    """Where torch.hub keeps (or will keep) the file downloaded from ``url``.

    Args:
        url: Address of the file.
        model_dir: Cache folder (default: ``<torch hub dir>/checkpoints``).
        file_name: Name in the cache (default: the last part of the URL's path).
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, file_name or osp.basename(urlparse(url).path))


def _download_to_hub_cache(url: str, model_dir: Optional[str], progress: bool,
                           file_name: Optional[str] = None,
                           check_hash: bool = False) -> str:
    cached = hub_cache_path(url, model_dir, file_name)
    if not osp.isfile(cached):
        os.makedirs(osp.dirname(cached), exist_ok=True)
        match = torch.hub.HASH_REGEX.search(osp.basename(cached)) if check_hash else None
        # torch.hub downloads to a temporary name and renames when complete.
        torch.hub.download_url_to_file(url, cached, match.group(1) if match else None,
                                       progress=progress)
    return cached


def load_url_safely(url: str, map_location: Optional[Any] = None,
                    model_dir: Optional[str] = None, progress: bool = False) -> Any:
    """Download ``url`` into torch.hub's cache (once) and load it safely.

    In a distributed run, rank 0 downloads first and the others read its copy.

    Args:
        url: ``http://`` or ``https://`` address of a checkpoint.
        map_location: Same as :func:`torch.load`.
        model_dir: Cache folder (default: ``<torch hub dir>/checkpoints``).
        progress: Show a download progress bar.
    """
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = _download_to_hub_cache(url, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = _download_to_hub_cache(url, model_dir, progress)
    return safe_load_checkpoint(cached, map_location, name=f'{url} (cached as {cached})')


def load_url(url: str, model_dir: Optional[str] = None, map_location: Optional[Any] = None,
             progress: bool = True, check_hash: bool = False,
             file_name: Optional[str] = None, weights_only: bool = True) -> Any:
    """``torch.hub.load_state_dict_from_url`` with the safe loader, for mmengine's ``load_url``.

    mmengine's ``load_url`` is torch.hub's function, which unpickles with
    ``weights_only=False``; :func:`install_safe_checkpoint_loaders` puts this one
    under that name. The arguments mean what they mean to torch.hub, except that
    ``weights_only`` is accepted and ignored: the load is always safe. Unlike
    torch.hub, a zip archive holding a single legacy checkpoint is not unpacked.

    Args:
        url: ``http://`` or ``https://`` address of a checkpoint.
        model_dir: Cache folder (default: ``<torch hub dir>/checkpoints``).
        map_location: Same as :func:`torch.load`.
        progress: Show a download progress bar.
        check_hash: Check the download against the hash prefix in its file name
            (``name-<sha256 prefix>.ext``).
        file_name: Name in the cache (default: the last part of the URL's path).
        weights_only: Ignored (always True).
    """
    cached = _download_to_hub_cache(url, model_dir, progress, file_name, check_hash)
    return safe_load_checkpoint(cached, map_location, name=f'{url} (cached as {cached})')


def _lookup(table: Dict[str, str], name: str, scheme: str) -> str:
    if name not in table:
        close = sorted(k for k in table if name.split('.')[0] in k)[:8]
        raise KeyError(f'{scheme}{name}: unknown model name; expected one of mmengine\'s '
                       f'{scheme} names' + (f', e.g. {close}' if close else ''))
    return table[name]


def torchvision_model_urls() -> Dict[str, str]:
    """mmengine's ``torchvision://`` names; without torchvision, its pre-0.13 table."""
    import mmengine
    from mmengine.runner.checkpoint import get_torchvision_models
    try:
        return get_torchvision_models()
    except ImportError:
        return mmengine.load(osp.join(mmengine.__path__[0], 'hub', 'torchvision_0.12.json'))


def load_from_local(filename: str, map_location: Optional[Any] = None) -> Any:
    return safe_load_checkpoint(filename, map_location)


def load_from_http(filename: str, map_location: Optional[Any] = None,
               model_dir: Optional[str] = None, progress: bool = False) -> Any:
    return load_url_safely(filename, map_location, model_dir, progress)


def load_from_torchvision(filename: str, map_location: Optional[Any] = None) -> Any:
    scheme, name = filename.split('://', 1)
    url = _lookup(torchvision_model_urls(), name, f'{scheme}://')
    return load_url_safely(url, map_location)


def load_from_openmmlab(filename: str, map_location: Optional[Any] = None) -> Any:
    from mmengine.runner.checkpoint import (_get_mmengine_home, get_deprecated_model_names,
                                            get_external_models)
    scheme, name = filename.split('://', 1)
    name = get_deprecated_model_names().get(name, name)
    location = _lookup(get_external_models(), name, f'{scheme}://')
    if location.startswith(('http://', 'https://')):
        return load_url_safely(location, map_location)
    return safe_load_checkpoint(osp.join(_get_mmengine_home(), location), map_location)


def load_from_mmcls(filename: str, map_location: Optional[Any] = None) -> Any:
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint, get_mmcls_models
    url = _lookup(get_mmcls_models(), filename[len('mmcls://'):], 'mmcls://')
    return _process_mmcls_checkpoint(load_url_safely(url, map_location))


def load_from_ceph(filename: str, map_location: Optional[Any] = None,
               backend: str = 'petrel') -> Any:
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(filename)
    return safe_load_checkpoint(io.BytesIO(data), map_location, name=filename)


def load_from_pavi(filename: str, map_location: Optional[Any] = None) -> Any:
    try:
        from pavi import modelcloud
    except ImportError as error:
        raise ImportError('Please install pavi to load checkpoints from pavi://') from error
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as folder:
        downloaded = osp.join(folder, model.name)
        model.download(downloaded)
        return safe_load_checkpoint(downloaded, map_location, name=filename)


def load_any_checkpoint(source: str, map_location: Optional[Any] = None) -> Any:
    """Load a checkpoint from a path, a URL or any mmengine scheme, safely.

    Args:
        source: Local path, ``http(s)://`` URL, ``torchvision://name``...
        map_location: Same as :func:`torch.load`.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    install_safe_checkpoint_loaders()  # idempotent; covers use without importing compat
    return CheckpointLoader.load_checkpoint(source, map_location=map_location)


# scheme prefixes, as mmengine registers them -> our loader, named as mmengine's
# (mmengine logs `Loads checkpoint by <name[10:]> backend`)
SAFE_LOADERS: Dict[Tuple[str, ...], Callable] = {
    ('', ): load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    ('mmcls://', ): load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    ('pavi://', ): load_from_pavi,
}


def _refusing_loader(prefix: str) -> Callable:
    def refuse(filename: str, map_location: Optional[Any] = None) -> Any:
        raise UnsafeCheckpointError(
            f'refusing to load {filename}: its scheme {prefix!r} was registered with '
            "mmengine's CheckpointLoader by another package, and lors_mmdet cannot "
            'guarantee it loads with weights_only=True. Download the file and load '
            'the local path instead.')
    refuse.__name__ = 'load_from_unsafe_scheme'
    return refuse


def _safe_checkpoint_loader(cls, path: str) -> Optional[Callable]:
    """``CheckpointLoader._get_checkpoint_loader`` that hands out only our loaders.

    The scheme table is read at every load, so a scheme registered after
    ``import lors_mmdet`` (even one that shadows ours) is refused too.
    """
    ours = set(SAFE_LOADERS.values())
    for prefix, function in cls._schemes.items():
        if re.match(prefix, path) is not None:
            return function if function in ours else _refusing_loader(prefix)
    return None


def install_safe_checkpoint_loaders() -> None:
    """Route every checkpoint load of mmengine through the safe loader.

    Our loaders take the schemes of ``CheckpointLoader``, whose lookup refuses any
    other loader found at load time. They also replace mmengine's loader functions
    and ``load_url`` (torch.hub's) under their names in mmengine's modules, where
    mmengine's functions find each other when called, so that those functions stay
    safe when taken before ``import lors_mmdet``. Idempotent.
    """
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import checkpoint as mmengine_checkpoint
    from mmengine.utils import dl_utils
    from mmengine.utils.dl_utils import hub
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    HistoryBuffer.__setstate__ = _history_buffer_setstate
    loader = mmengine_checkpoint.CheckpointLoader
    for prefixes, function in SAFE_LOADERS.items():
        loader.register_scheme(prefixes=list(prefixes), loader=function, force=True)
        setattr(mmengine_checkpoint, function.__name__, function)
    loader._get_checkpoint_loader = classmethod(_safe_checkpoint_loader)
    for module in (mmengine_checkpoint, dl_utils, hub):
        module.load_url = load_url
