"""Checkpoints that a crash cannot take away.

mmengine writes a checkpoint straight to its final name and, with ``max_keep_ckpts``,
deletes the oldest one *before* writing the new one: a process killed during a save
can leave a partial file and no intact checkpoint at all. Here

- :class:`AtomicLocalBackend` writes every file to a temporary name in the same
  folder and renames it into place once it is on disk;
- :class:`AtomicCheckpointHook` saves the new checkpoint first, then points
  ``last_checkpoint`` at it, and only then deletes what is outdated;
- :func:`find_resumable_checkpoint` picks the checkpoint to resume from, skipping
  damaged files without unpickling anything.
"""
import contextlib
import errno
import io
import logging
import os
import os.path as osp
import re
import secrets
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import mmengine
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ..checkpoint_loading import (CorruptCheckpointError, UnsafeCheckpointError,
                                  safe_load_checkpoint, zip_checkpoint_problem)

TEMP_SUFFIX = '.partial'
# disk full, quota exceeded, file size limit (ulimit -f)
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, 'EDQUOT', errno.ENOSPC)}
CHECKPOINT_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def _is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temporary file of :class:`AtomicLocalBackend`."""
    return name.startswith('.') and name.endswith(TEMP_SUFFIX)


def _fsync_folder(folder: str) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    if not hasattr(os, 'O_DIRECTORY'):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """Local storage whose ``put`` replaces the target in one step.

    The bytes go to a hidden temporary file next to the target
    (``.<name>.<random>.partial``), are flushed to disk, and the file is renamed
    over the target; then the folder is synced so that the rename survives a power
    loss. A failure or a kill at any point leaves either the old file or the new one
    under the target name, never a partial one. Everything else is
    :class:`mmengine.fileio.LocalBackend`'s. Select it with
    ``backend_args=dict(backend='atomic_local')``.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write ``obj`` to ``filepath`` atomically, creating its folder if needed.

        Args:
            obj: Data to be written.
            filepath: Target path.
        """
        filepath = str(filepath)
        if osp.isdir(filepath):
            raise IsADirectoryError(
                errno.EISDIR, f'cannot save {filepath}: a folder has that name; move or '
                'rename the folder (nothing was written, earlier checkpoints are intact)',
                filepath)
        folder = osp.dirname(osp.abspath(filepath))
        mmengine.mkdir_or_exist(folder)
        temp = osp.join(folder,
                        f'.{osp.basename(filepath)}.{secrets.token_hex(4)}{TEMP_SUFFIX}')
        # os.open applies the umask, so the result gets an ordinary file's permissions.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, filepath)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.remove(temp)
            if isinstance(error, OSError) and error.errno in _NO_ROOM:
                raise OSError(
                    error.errno, f'cannot save {filepath} ({len(obj)} bytes): '
                    f'{error.strerror}. An atomic save writes the whole new file before '
                    'the old one is replaced or deleted, so the folder needs room for one '
                    'checkpoint more than max_keep_ckpts keeps (two with '
                    'max_keep_ckpts=1); free space or save elsewhere (--work-dir, '
                    'the checkpoint hook\'s out_dir). Earlier checkpoints are intact.',
                    filepath) from error
            raise
        _fsync_folder(folder)

    def put_text(self, obj: str, filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically (see :meth:`put`).

        Args:
            obj: Text to be written.
            filepath: Target path.
            encoding: Text encoding.
        """
        self.put(obj.encode(encoding), filepath)


def save_checkpoint_file(checkpoint: Any, path: str) -> None:
    """``torch.save`` to a local ``path`` atomically (see :class:`AtomicLocalBackend`).

    Args:
        checkpoint: What to save (tensors, dicts, plain types).
        path: Target file.
    """
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    AtomicLocalBackend().put(buffer.getvalue(), path)


def remove_temp_files(folder: str) -> List[str]:
    """Delete the temporary files that killed saves left in ``folder``.

    Only call it while nothing is saving into ``folder``.

    Args:
        folder: A local folder.

    Returns:
        The deleted paths.
    """
    removed = []
    if osp.isdir(folder):
        for name in os.listdir(folder):
            if _is_temp_file(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(osp.join(folder, name))
                    removed.append(osp.join(folder, name))
    return removed


def _remove_checkpoint(backend, path: str) -> None:
    """Delete a checkpoint file, or folder (deepspeed's), if it is there."""
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):
        backend.rmtree(path)


class _PostponedRemovals:
    """A file backend whose ``remove``/``rmtree`` wait for :meth:`apply`."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self._paths: List[str] = []

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def remove(self, path: str) -> None:
        self._paths.append(path)

    def rmtree(self, path: str) -> None:
        self._paths.append(path)

    def apply(self, keep: Tuple[Optional[str], ...] = ()) -> None:
        """Delete the postponed paths, except those in ``keep``."""
        for path in self._paths:
            if path not in keep:
                _remove_checkpoint(self._backend, path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` whose saves never lose the last good one.

    Takes the same arguments. For a local ``out_dir`` every checkpoint (regular,
    best, last) is written through :class:`AtomicLocalBackend`. Each save writes the
    new checkpoint first, then ``last_checkpoint`` (atomically too), and deletes
    outdated checkpoints (``max_keep_ckpts``, the previous best) only after that, so
    a kill at any moment leaves the previous checkpoint intact and named by
    ``last_checkpoint``, or the new one. The ``keep_ckpt_ids`` bookkeeping stored
    in the checkpoints is exactly mmengine's. Temporary files of killed saves are
    deleted at the next save.
    """

    _atomic = False  # set by before_train: whether out_dir is a local folder

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else runner.work_dir
        backend = (self.backend_args or {}).get('backend', 'local')
        self._atomic = (self.file_client_args is None and backend == 'local'
                        and '://' not in str(out_dir))
        if self._atomic:
            self.backend_args = dict(backend='atomic_local')
        else:
            runner.logger.warning(
                f'AtomicCheckpointHook: checkpoints go to {out_dir} through '
                f'{self.file_client_args or self.backend_args}, not a local folder; '
                'they are saved the way mmengine saves them, without atomic writes.')
        super().before_train(runner)
        if self._atomic and self.save_best is not None and is_main_process():
            for key in self.key_indicators:
                self._recover_best_checkpoint(runner, key)

    def _recover_best_checkpoint(self, runner, key: str) -> None:
        """Finish a best-checkpoint save that a kill interrupted, at resume.

        A kill after the new ``best_<key>_<iter|epoch>_N.pth`` is written but before
        the regular checkpoint records it leaves a best file that nothing tracks:
        the resumed run recorded the previous best. The newest such file written
        after the recorded best and no later than the step resumed from, which
        names itself the best, becomes the tracked one with its score, and the
        previously recorded best is deleted. Other files are left alone (a fresh
        run, which tracks no best, changes nothing).
        """
        single = len(self.key_indicators) == 1
        path_key = 'best_ckpt' if single else f'best_ckpt_{key}'
        score_key = 'best_score' if single else f'best_score_{key}'
        tracked = runner.message_hub.get_info(path_key)
        if tracked is None or not osp.isdir(self.out_dir):
            return
        pattern = re.compile(rf'^best_{re.escape(key.replace("/", "_"))}_(iter|epoch)_'
                             r'(\d+)\.pth$')
        found = {}  # path -> (unit, N)
        for name in os.listdir(self.out_dir):
            match = pattern.match(name)
            if match and osp.isfile(osp.join(self.out_dir, name)):
                found[osp.join(self.out_dir, name)] = (match.group(1), int(match.group(2)))
        tracked_step = next((step for path, (_, step) in found.items()
                             if osp.abspath(path) == osp.abspath(tracked)), -1)
        resumed = {'iter': runner.iter, 'epoch': runner.epoch}
        later = sorted((step, path) for path, (unit, step) in found.items()
                       if tracked_step < step <= resumed[unit])
        if not later:
            return
        newest = later[-1][1]
        try:
            runtime = safe_load_checkpoint(newest).get('message_hub', {}).get(
                'runtime_info', {})
        except (CorruptCheckpointError, UnsafeCheckpointError):
            return  # not a best checkpoint this hook wrote
        if osp.abspath(str(runtime.get(path_key))) != osp.abspath(newest):
            return
        print_log(f'{newest} was saved as the best checkpoint ({key} '
                  f'{runtime.get(score_key)}) just before the previous run ended, which '
                  f'did not record it: resuming, we adopt it and delete {tracked}.',
                  logger='current', level=logging.WARNING)
        runner.message_hub.update_info(path_key, newest)
        runner.message_hub.update_info(score_key, runtime.get(score_key))
        if single:
            self.best_ckpt_path = newest
        else:
            self.best_ckpt_path_dict[key] = newest
        _remove_checkpoint(self.file_backend, tracked)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            # the same bookkeeping as mmengine (it goes into this checkpoint),
            # but the file is deleted only once the new checkpoint is saved
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        # Model-parallel saves involve every rank; the files are rank 0's business.
        if not is_main_process():
            return

        AtomicLocalBackend().put_text(self.last_ckpt,
                                      osp.join(runner.work_dir, 'last_checkpoint'))
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(old_step))
            if path != self.last_ckpt:
                _remove_checkpoint(self.file_backend, path)
        if self._atomic:
            remove_temp_files(self.out_dir)
        remove_temp_files(runner.work_dir)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # mmengine deletes the previous best checkpoint before writing the new one:
        # let it ask, and delete once the new files are written.
        backend = self.file_backend
        postponed = self.file_backend = _PostponedRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        if is_main_process():
            keep = (self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                    *getattr(self, 'best_ckpt_path_dict', {}).values())
            postponed.apply(keep=keep)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint ``path`` cannot be loaded, or None when it looks intact.

    Checks the zip container that ``torch.save`` writes: the archive opens, every
    member matches its CRC-32, and the pickle (``data.pkl``) is there. Nothing is
    unpickled. Files in torch's legacy (non-zip) format count as unreadable.

    Args:
        path: A checkpoint file.
    """
    if not osp.isfile(path):
        return 'it does not exist' if not osp.exists(path) else 'it is not a file'
    if osp.getsize(path) == 0:
        return 'it is empty (0 bytes)'
    return zip_checkpoint_problem(path)


def _checkpoint_files(folder: str) -> List[Tuple[int, float, str]]:
    """(N, mtime, path) of every ``iter_N.pth`` / ``epoch_N.pth`` in ``folder``."""
    found = []
    if osp.isdir(folder):
        for name in os.listdir(folder):
            match = CHECKPOINT_NAME.match(name)
            path = osp.join(folder, name)
            if match and osp.isfile(path):
                found.append((int(match.group(1)), osp.getmtime(path), path))
    return found


def _read_last_checkpoint(work_dir: str) -> Optional[str]:
    """The path that ``<work_dir>/last_checkpoint`` names, if any."""
    save_file = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(save_file):
        return None
    with open(save_file, errors='replace') as f:
        return f.read().strip() or None


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume a run in ``work_dir`` from, or None if none is intact.

    That is the file named by ``<work_dir>/last_checkpoint`` when it is intact
    (:func:`checkpoint_problem`); otherwise, with a warning that names the file and
    what is wrong with it, the intact ``iter_N.pth`` / ``epoch_N.pth`` with the
    largest N in the work dir (or in the folder ``last_checkpoint`` points into).
    Temporary files of killed saves are never candidates. A remote checkpoint
    (``s3://...``) named by ``last_checkpoint`` is returned unchecked.

    Args:
        work_dir: The run's work dir.
    """
    named = _read_last_checkpoint(work_dir)
    if named is not None and '://' in named:
        return named  # a remote out_dir: not checked here, mmengine loads it as it is
    if named is not None:
        problem = checkpoint_problem(named)
        if problem is None:
            return named
        print_log(f'last_checkpoint names {named}, which cannot be resumed from: '
                  f'{problem}. Looking for the newest intact checkpoint.',
                  logger='current', level=logging.WARNING)
    folders = {osp.abspath(work_dir)}
    if named is not None:
        folders.add(osp.abspath(osp.dirname(named)))
    candidates = sorted((c for folder in folders for c in _checkpoint_files(folder)),
                        reverse=True)
    for _, _, path in candidates:
        if named is not None and osp.abspath(path) == osp.abspath(named):
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            if named is not None:
                print_log(f'Resuming from {path} instead.', logger='current',
                          level=logging.WARNING)
            return path
        print_log(f'Skipping checkpoint {path}: {problem}.', logger='current',
                  level=logging.WARNING)
    return None


def select_resume_checkpoint(work_dir: str) -> Optional[str]:
    """What ``--resume`` without a file resumes from: None for a fresh work dir.

    Args:
        work_dir: The run's work dir.

    Raises:
        FileNotFoundError: The work dir holds checkpoints (or ``last_checkpoint``),
            but none of them is intact.
    """
    path = find_resumable_checkpoint(work_dir)
    if path is None and (_read_last_checkpoint(work_dir) is not None
                         or _checkpoint_files(work_dir)):
        raise FileNotFoundError(
            f'--resume: no intact checkpoint in {work_dir} (see the warnings above); '
            'resume from a file with --resume CHECKPOINT or use another --work-dir.')
    if path is None:
        print_log(f'--resume: {work_dir} holds no checkpoint yet; training from the start.',
                  logger='current')
    return path
