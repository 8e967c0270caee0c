"""The built-in demo corpus: English documentation text that ships with every CPython.

Source: ``pydoc_data.topics.topics``, the Python Language Reference and library
topics that ``help()`` prints (~470 KB of prose with code examples in CPython
3.11), cut into ~200 documents at its section headings.  Should an interpreter have been stripped of
``pydoc_data``, the docstrings of the standard library's modules (read with
``ast``, no imports) are used instead.  Either way the corpus needs no network
and no ``../shared``; it depends only on the running Python version, which its
name records.
"""
from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from pathlib import Path

from ..errors import UserError

CORPUS_VERSION = 1  # bump when the way documents are cut or written changes
_HEADING_UNDERLINE = re.compile(r'([=*\-~^"])\1*')
_STDLIB_SKIP = re.compile(r"^(test|tests|idlelib|lib2to3|site-packages|dist-packages|ensurepip|turtledemo)$")


def demo_corpus_name() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}-docs-v{CORPUS_VERSION}"


def demo_corpus_documents() -> list[tuple[str, str]]:
    """``(name, text)`` pairs in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return _stdlib_docstring_documents()
    documents = []
    for topic in sorted(topics):
        for n, section in enumerate(split_sections(topics[topic])):
            documents.append((topic if n == 0 else f"{topic}.{n}", section))
    return documents


def split_sections(text: str) -> list[str]:
    """Cut reStructuredText-style prose before each underlined heading (a line followed by a line of
    one repeated ``= * - ~ ^ "`` character of the same length): ~200 documents instead of ~80
    topics of very uneven size, so a held-out fraction by document is a fair sample."""
    lines = text.strip().split("\n")
    sections, current = [], []
    for i, line in enumerate(lines):
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if current and line.strip() and len(underline) == len(line) and _HEADING_UNDERLINE.fullmatch(underline):
            sections.append("\n".join(current).strip() + "\n")
            current = []
        current.append(line)
    if "".join(current).strip():
        sections.append("\n".join(current).strip() + "\n")
    return sections


def _stdlib_docstring_documents() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(_STDLIB_SKIP.match(part) for part in relative.parts[:-1]):
            continue
        text = module_docstrings(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            documents.append((relative.with_suffix("").as_posix().replace("/", "."), text))
    if not documents:
        raise UserError(f"no demo corpus on this Python: neither pydoc_data nor standard library sources under "
                        f"{root}; pass your own text files with --input")
    return documents


def module_docstrings(source: str) -> str:
    """The module, class and function docstrings of one Python source file, in source order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docstrings = [d.strip() for n in nodes if (d := ast.get_docstring(n))]
    return "\n\n".join(docstrings) + "\n" if docstrings else ""


def write_demo_corpus(directory: str | Path) -> list[Path]:
    """Materialise the corpus as one UTF-8 ``.txt`` file per document (byte-identical on every run)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for n, (name, text) in enumerate(demo_corpus_documents()):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        path = directory / f"{n:04d}-{safe}.txt"
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        files.append(path)
    return files


def demo_corpus_sha256() -> str:
    digest = hashlib.sha256()
    for name, text in demo_corpus_documents():
        digest.update(name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()
