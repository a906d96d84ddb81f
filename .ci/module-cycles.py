#!/usr/bin/env python3
"""Fails if the files of a crate import each other in a cycle.

Reads every `crate::a::b`, `super::a::b` and `self::a::b` path in each crate's src/
(use lines and inline paths, `{…}` groups expanded), resolves it against the file's
own module, maps it to the file that defines the module, and looks for cycles between
files. A parent's edges to its own children (declaring them with `mod x;`, re-exporting
or using their items) are the module tree, not imports, and are dropped; a child's
uses of its parent, and every edge between siblings or across the tree, count. Test
modules (`#[cfg(test)] mod tests { ... }`) are skipped: tests may reach anywhere.
"""
import os
import re
import sys

CRATES = ["actors/src", "web/src", "src"]


def module_files(root):
    """Module path (tuple) -> file, for every .rs file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("lib", "main") and len(parts) == 1:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            out[tuple(parts)] = rel
    return out


def strip_tests(src):
    """Drops `#[cfg(test)]` items (a brace-balanced block after the attribute)."""
    out, i = [], 0
    while True:
        j = src.find("#[cfg(test)]", i)
        if j < 0:
            out.append(src[i:])
            break
        out.append(src[i:j])
        k = src.find("{", j)
        semi = src.find(";", j)
        if semi >= 0 and (k < 0 or semi < k):
            i = semi + 1
            continue
        depth = 0
        for n in range(k, len(src)):
            if src[n] == "{":
                depth += 1
            elif src[n] == "}":
                depth -= 1
                if depth == 0:
                    i = n + 1
                    break
        else:
            i = len(src)
    return "".join(out)


ROOTS = r"(?<![\w:])((?:crate|self|super)(?:::super)*)::"


def expand_use(text):
    """Every path from `crate`, `self` or `super` in the text, as (root, [segments]),
    with `use x::{a, b::c}` groups expanded."""
    paths = []
    for m in re.finditer(ROOTS + r"((?:\w+::)*)\{", text):
        start = m.end()
        depth, n = 1, start
        while depth and n < len(text):
            depth += {"{": 1, "}": -1}.get(text[n], 0)
            n += 1
        inner = text[start : n - 1]
        prefix = m.group(1) + "::" + m.group(2)
        for item in re.split(r",(?![^{]*\})", inner):
            item = item.strip()
            if item and item != "self":
                paths.extend(expand_use(prefix + item))
    for m in re.finditer(ROOTS + r"((?:\w+::)*\w+)", text):
        paths.append((m.group(1), m.group(2).split("::")))
    return paths


def resolve(module, root, path):
    """The absolute module path of `root::path` written in module `module` (a tuple)."""
    if root == "crate":
        return list(path)
    base = list(module)
    if root.startswith("super"):
        base = base[: len(base) - root.count("super")]
    return base + list(path)


def owner(files, path):
    """The file defining the longest prefix of `path` that is a module."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in files:
            return files[tuple(path[:n])]
    return None


def cycles(root):
    files = module_files(root)
    edges = {f: set() for f in files.values()}
    for mod, f in files.items():
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            src = strip_tests(fh.read())
        src = re.sub(r"//.*", "", src)
        for root_kw, path in expand_use(src):
            target_path = resolve(mod, root_kw, path)
            target = owner(files, target_path)
            if not target or target == f:
                continue
            target_mod = next(k for k, v in files.items() if v == target)
            # A parent reaching into its own subtree is the module tree, not an import.
            if target_mod[: len(mod)] == mod and len(target_mod) > len(mod):
                continue
            edges[f].add(target)
    # Tarjan's strongly connected components; a component of two or more is a cycle.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return [sorted(c) for c in comps if len(c) > 1], edges


def main():
    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    bad = False
    for crate in CRATES:
        root = os.path.join(top, crate)
        comps, edges = cycles(root)
        for comp in comps:
            bad = True
            print(f"{crate}: import cycle between " + ", ".join(comp))
            for f in comp:
                print(f"    {f} -> " + ", ".join(sorted(e for e in edges[f] if e in comp)))
    if bad:
        sys.exit(1)
    print("no import cycles between the files of " + ", ".join(CRATES))


if __name__ == "__main__":
    main()
