"""Progress of long jobs: a tqdm bar on a terminal, a few plain lines in a log."""
import fcntl
import importlib.util
import io
import os
import os.path as osp
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from lors_mmdet.progress import LineProgress, progress_bar

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class TerminalLike(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm
    bar = progress_bar(5, 'work', stream=TerminalLike())
    assert isinstance(bar, tqdm)
    bar.close()


def test_a_log_gets_one_line_per_tenth():
    log = io.StringIO()
    progress = progress_bar(1000, 'drawing', unit='img', stream=log)
    assert isinstance(progress, LineProgress)
    for step in range(1000):
        progress.set_postfix(loss=1.0 / (step + 1))
        progress.update(1)
    progress.close()
    lines = log.getvalue().splitlines()
    assert '\r' not in log.getvalue()
    assert [re.match(r'drawing: (\d+)/1000 img \((\d+)%\)', line).groups() for line in lines] \
        == [(str(100 * k), str(10 * k)) for k in range(1, 11)]
    assert lines[-1].endswith(', loss=0.001')


def test_a_log_of_an_interrupted_job_says_where_it_stopped():
    log = io.StringIO()
    progress = progress_bar(7, 'work', stream=log)  # fewer units than lines: one each
    progress.update(3)
    progress.close()
    progress.close()
    assert log.getvalue().splitlines()[-1].startswith('work: 3/7 it (43%)')
    assert len(log.getvalue().splitlines()) == 1


GENERATE = [sys.executable, 'tools/generate_synthetic_coco.py', '--num-train', '30',
            '--num-val', '10', '--img-size', '32']


def test_data_generation_in_a_log(tmp_path):
    result = subprocess.run(GENERATE + ['--out', str(tmp_path / 'data')], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert '\r' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith('synthetic COCO')]
    assert len(lines) == 10 and lines[-1].startswith('synthetic COCO: 40/40 img (100%)')


def test_data_generation_on_a_terminal(tmp_path):
    """A real pseudo-terminal as standard error: tqdm redraws its bar in place."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    try:
        process = subprocess.Popen(GENERATE + ['--out', str(tmp_path / 'data')], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=slave,
                                   env=dict(os.environ, PYTHONPATH=ROOT))
        os.close(slave)
        output = b''
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=300) == 0
    finally:
        os.close(master)
    text = output.decode()
    assert '\r' in text and '40/40' in text and 'img/s' in text
    assert not re.search(r'synthetic COCO: \d+/40 img \(', text)  # no log lines


@pytest.fixture(scope='module')
def pretrain_tool():
    spec = importlib.util.spec_from_file_location(
        'pretrain_toy_backbone', osp.join(ROOT, 'tools', 'pretrain_toy_backbone.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbone_pretraining_shows_its_progress(pretrain_tool, synthetic_coco, tmp_path,
                                                 capsys):
    pretrain_tool.main(['--data-root', synthetic_coco, '--out', str(tmp_path / 'b.pth'),
                        '--iters', '3', '--batch-size', '4', '--extra-images', '20'])
    err = capsys.readouterr().err
    assert re.search(r'drawing extra images: 20/20 img \(100%\)', err), err
    iterations = re.findall(r'pretraining the toy backbone: (\d)/3 iter \(\d+%\), '
                            r'[\d.]+ s, loss=[\d.]+', err)
    assert iterations == ['1', '2', '3'], err
