#!/usr/bin/env python3
"""A crate's house: lines, files, floors, crate-internal imports and circles of its modules.

Usage: python3 crates/devtools/house.py [SRC_DIR, default crates/cli/src] [-v: each module's
floor and what it uses]. Lines and files count every .rs file but the binary's main.rs (tests
inside a file included).

Node = one file (a module). Edge A -> B when A's non-test code names `crate::B...` or
`super::...` resolving to B. Floors = nodes on the longest who-uses-whom chain (strongly
connected components condensed). Imports = `use` statements of crate-internal paths
(`use crate::`, `use super::`) in non-test code. Circles = components of more than one module.
"""
import os, re, sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "crates/cli/src"
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"],):
                rel = []
            mods["::".join(rel) if rel else "crate"] = p
if "main" in mods:
    del mods["main"]  # the binary's two-line main calls the library
total_lines = sum(sum(1 for _ in open(p)) for p in mods.values())

def code(p):
    t = open(p).read()
    m = re.search(r"#\[cfg\(test\)\]\s*mod \w+", t)
    return t[: m.start()] if m else t

def resolve(parts):
    for n in range(len(parts), 0, -1):
        k = "::".join(parts[:n])
        if k in mods:
            return k
    return "crate"

edges = defaultdict(set)
imports = 0
for m, p in mods.items():
    t = code(p)
    t = re.sub(r"//[^\n]*", "", t)
    imports += len(re.findall(r"\buse\s+(?:crate|super)::", t))
    # expand `use crate::{a, b::c}` groups
    paths = []
    for g in re.finditer(r"\b(crate|super)::\{([^}]*)\}", t):
        for item in g.group(2).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                paths.append((g.group(1), item.split("::")))
    for g in re.finditer(r"\b(crate|super)::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", t):
        paths.append((g.group(1), g.group(2).split("::")))
    here = [] if m == "crate" else m.split("::")
    for g in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::", t):
        if "::".join(here + [g.group(1)]) in mods:
            paths.append(("child", [g.group(1)]))
    for base, parts in paths:
        if base == "crate":
            target = resolve(parts)
        elif base == "child":
            target = resolve(here + parts)
        else:
            target = resolve(here[:-1] + parts)
        if target != m:
            edges[m].add(target)

# strongly connected components (Tarjan)
idx, low, st, on, comps, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = counter[0]; counter[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        c = []
        while True:
            w = st.pop(); on.discard(w); c.append(w)
            if w == v: break
        comps.append(c)
for v in mods:
    if v not in idx: sc(v)
comp_of = {v: i for i, c in enumerate(comps) for v in c}
memo = {}
def depth(c):
    if c in memo: return memo[c]
    memo[c] = 1
    d = 1 + max([depth(comp_of[w]) for v in comps[c] for w in edges[v] if comp_of[w] != c] or [0])
    memo[c] = d
    return d
floors = max(depth(i) for i in range(len(comps)))
circles = [sorted(c) for c in comps if len(c) > 1]
print(f"lines {total_lines}  files {len(mods)}  floors {floors}  imports {imports}  "
      f"edges {sum(len(e) for e in edges.values())}  circles {len(circles)}")
for c in circles:
    print("  circle:", " <-> ".join(c))
if "-v" in sys.argv:
    for m in sorted(mods, key=lambda m: -depth(comp_of[m])):
        print(f"  floor {depth(comp_of[m]):2}  {m:22} -> {', '.join(sorted(edges[m]))}")
