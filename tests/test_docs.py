"""The documentation can be followed: links lead somewhere, no reference to
texts the reader does not have, and generated tables sit between markers that
a tool writes. Text checks only: nothing is built or run."""
import glob
import io
import os.path as osp
import re
import tokenize
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _files(*patterns: str) -> List[str]:
    found = set()
    for pattern in patterns:
        found.update(glob.glob(osp.join(ROOT, pattern), recursive=True))
    return sorted(found)


DOCS = _files('README.md', 'docs/*.md', 'docs/experiments/**/*.md')
SOURCES = _files('configs/**/*.py', 'tools/**/*.py', 'lors_mmdet/**/*.py')
SCRIPTS = _files('tools/**/*.sh')

# References a reader of the repository cannot follow: the project's own
# issues and notes, its work sessions. URLs (and owner/repo#N) are removed
# before these are searched for, so upstream issue links stay allowed.
FORBIDDEN = [
    r'\bissues?\b',
    r'\bthe spec\b', r"\bspec's\b", r'\bspec\s*(?:table|:|"|\))', r'\(spec\b',
    r'shared/spec',
    r'\blast stop\b', r'\bstop \d+\b',
    r'\b(?:previous|this|last|next) session\b', r'\bsessions so far\b',
]
URL = re.compile(r'\S+://\S+|[\w.-]+/[\w.-]+#\d+')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
MARKER = re.compile(r'<!--\s*(.*?)\s*-->', re.S)
# generated tables and the tools that write them (their command must be
# written just before the start marker)
WRITERS = {
    'experiments:compress': 'tools/analysis/compress_experiments.py',
    'detr-params': 'tools/analysis/param_report.py --detr-table --write',
    'experiments:': 'tools/analysis/run_experiments.py',
}


def _relative(path: str) -> str:
    return osp.relpath(path, ROOT)


def _read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def _prose(markdown: str) -> str:
    """``markdown`` with fenced code blocks and inline code blanked out (same
    length, so offsets stay)."""
    def blank(match: re.Match) -> str:
        return re.sub(r'[^\n]', ' ', match.group(0))

    return re.sub(r'`[^`\n]*`', blank, FENCE.sub(blank, markdown))


def _anchors(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` ... for repeated headings."""
    anchors, seen = set(), {}
    for heading in re.findall(r'^#{1,6}\s+(.+?)\s*#*\s*$', FENCE.sub('', markdown), re.M):
        slug = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f'{slug}-{count}')
    return anchors


def _python_text(source: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of every comment and string (docstrings included)."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            yield token.start[0], token.string


def _forbidden_in(text: str) -> List[str]:
    text = URL.sub('', text)
    return [m.group(0) for pattern in FORBIDDEN
            for m in re.finditer(pattern, text, re.I)]


def test_the_doc_lists_are_not_empty():
    assert osp.join(ROOT, 'README.md') in DOCS
    assert osp.join(ROOT, 'docs', 'experiments', 'log.md') in DOCS
    assert len(SOURCES) > 50


@pytest.mark.parametrize('path', DOCS, ids=_relative)
def test_relative_links_lead_to_files_and_headings(path):
    text = _read(path)
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition('#')
        linked = osp.normpath(osp.join(osp.dirname(path), file_part)) if file_part else path
        if not osp.exists(linked):
            broken.append(f'{target}: no file {_relative(linked)}')
        elif anchor and linked.endswith('.md') and anchor not in _anchors(_read(linked)):
            broken.append(f'{target}: no heading #{anchor} in {_relative(linked)}')
    assert not broken, f'{_relative(path)}: ' + '; '.join(broken)


@pytest.mark.parametrize('path', DOCS, ids=_relative)
def test_every_code_fence_is_closed(path):
    """An unclosed fence turns the rest of the page into code (headings and links
    included)."""
    opened = None
    for number, line in enumerate(_read(path).splitlines(), 1):
        fence = re.match(r'^(```|~~~)', line)
        if fence and opened is None:
            opened = (number, fence.group(1))
        elif fence and line.strip() == opened[1]:
            opened = None
        elif fence:  # "```bash" inside a block: the block before was not closed
            raise AssertionError(f'{path}: the code fence opened on line {opened[0]} '
                                 f'is still open where line {number} opens another')
    assert opened is None, f'{path}: the code fence opened on line {opened[0]} never closes'


@pytest.mark.parametrize('path', DOCS, ids=_relative)
def test_docs_name_no_unpublished_reference(path):
    found = _forbidden_in(_read(path))
    assert not found, f'{_relative(path)} refers to what a reader cannot find: {found}'


def test_comments_and_docstrings_name_no_unpublished_reference():
    found = []
    for path in SOURCES:
        for line, text in _python_text(_read(path)):
            found += [f'{_relative(path)}:{line}: {hit!r}' for hit in _forbidden_in(text)]
    for path in SCRIPTS:
        for line, text in enumerate(_read(path).splitlines(), start=1):
            found += [f'{_relative(path)}:{line}: {hit!r}' for hit in _forbidden_in(text)]
    assert not found, '\n'.join(found)


@pytest.mark.parametrize('text, hits', [
    ("the issue's goal of 35%", ['issue']),
    ('spec: ../shared/spec/lors.md', ['spec:', 'shared/spec']),
    ('(the file of the last stop)', ['last stop']),
    ('at stop 3, as in the previous session', ['stop 3', 'previous session']),
    ('open-mmlab/mmcv#3308, https://github.com/open-mmlab/mmcv/issues/3310', []),
    ('for path, spec in shapes.items(); the spectrum stops', []),
])
def test_forbidden_patterns(text, hits):
    assert sorted(_forbidden_in(text)) == sorted(hits)


def _markers(path: str) -> List[Tuple[int, str]]:
    """(offset, text) of the HTML comments outside code."""
    return [(m.start(), m.group(1)) for m in MARKER.finditer(_prose(_read(path)))]


@pytest.mark.parametrize('path', DOCS, ids=_relative)
def test_every_comment_marker_is_a_pair_written_by_a_tool(path):
    """Only ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` pairs, each
    name once, in order, and named by a tool whose command precedes it."""
    text = _read(path)
    starts: Dict[str, int] = {}
    ends: Dict[str, int] = {}
    for offset, marker in _markers(path):
        name, _, kind = marker.rpartition(':')
        assert name and kind in ('start', 'end'), (
            f'{_relative(path)}: <!-- {marker} --> is not a NAME:start / NAME:end marker '
            '(a table between markers must be written by a tool)')
        seen = starts if kind == 'start' else ends
        assert name not in seen, f'{_relative(path)}: <!-- {marker} --> appears twice'
        seen[name] = offset
    assert sorted(starts) == sorted(ends), f'{_relative(path)}: unpaired markers'
    for name, start in starts.items():
        assert start < ends[name], f'{_relative(path)}: {name}:end before {name}:start'
        writer = [command for prefix, command in WRITERS.items()
                  if name == prefix or (prefix.endswith(':') and name.startswith(prefix))]
        assert writer, f'{_relative(path)}: no tool writes <!-- {name}:start -->'
        before = text[max(0, start - 800):start]
        assert writer[0] in before, (
            f'{_relative(path)}: the command of the tool that writes {name} '
            f'({writer[0]} ...) is not written before its markers')


def test_the_experiment_log_has_the_markers_of_the_plans_to_come():
    names = {marker for _, marker in _markers(osp.join(ROOT, 'docs', 'experiments',
                                                        'log.md'))}
    for plan in ('detr-stacks', 'compress'):
        assert {f'experiments:{plan}:start', f'experiments:{plan}:end'} <= names
