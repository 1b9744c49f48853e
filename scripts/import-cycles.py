#!/usr/bin/env python3
"""Finds import cycles between the files of each crate of the workspace.

A file imports another when it names an item of the other's module through `crate::`,
`super::` or `self::` paths (in `use` declarations or in code). Declaring a child module
(`mod x;`) is not an import. Prints every cycle found and exits 1 if there is one.

    python3 scripts/import-cycles.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["crank-security-core", "crank-policy", "crank-runtime", "crank-ca", "crank-agent", "crank-cli"]

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)
COMMENT_RE = re.compile(r"//[^\n]*")


def module_files(src: Path):
    """Module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["lib"], ["main"]):
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        if parts and parts[0] == "bin":
            continue
        out[tuple(parts)] = f
    return out


def resolve(base, segments, modules):
    """The file of the longest module prefix of base+segments."""
    path = list(base)
    for seg in segments:
        if seg == "super":
            path = path[:-1]
        elif seg == "self":
            continue
        else:
            path.append(seg)
    while path and tuple(path) not in modules:
        path.pop()
    return modules.get(tuple(path))


def imports(file, mod_path, modules):
    text = COMMENT_RE.sub("", file.read_text())
    found = set()

    def add(kind, rest):
        segs = [s for s in rest.split("::") if s]
        if kind == "crate":
            base = []
        elif kind == "super":
            base = list(mod_path[:-1])
        else:
            base = list(mod_path)
        target = resolve(tuple(base), segs, modules)
        if target is not None and target != file:
            found.add(target)

    for m in USE_GROUP_RE.finditer(text):
        kind, prefix, group = m.group(1), m.group(2), m.group(3)
        for item in re.split(r"[,{}]", group):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                add(kind, prefix + "::" + item)
    for m in PATH_RE.finditer(text):
        kind, rest = m.group(1), m.group(2)
        # `super::x` inside a child module: rest starts with the sibling or the parent item
        add(kind, rest)
    return found


def cycles(graph):
    """Strongly connected components with more than one file."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    bad = False
    for crate in CRATES:
        src = ROOT / crate / "src"
        modules = module_files(src)
        by_file = {f: p for p, f in modules.items()}
        graph = {f: imports(f, by_file[f], modules) for f in modules.values()}
        for comp in cycles(graph):
            bad = True
            names = sorted(str(f.relative_to(ROOT)) for f in comp)
            print(f"import cycle in {crate}: " + " <-> ".join(names))
            for f in sorted(comp):
                deps = sorted(str(d.relative_to(ROOT)) for d in graph[f] if d in comp)
                print(f"  {f.relative_to(ROOT)} imports {', '.join(deps)}")
    if bad:
        sys.exit(1)
    print("no import cycles between the files of " + ", ".join(CRATES))


if __name__ == "__main__":
    main()
